//! Write a tiny random Qwen3-VL checkpoint folder that every tool accepts: config.json,
//! model.safetensors, the real Qwen tokenizer (tools/setup.sh fetches it) and
//! preprocessor_config.json. For trying `diagnose` and the trainer without a download.
//!
//!     cargo run --release -p qoq-policy --bin make-tiny-checkpoint -- --out DIR [--seed S]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qoq_policy::{Qwen3VL, Qwen3VLConfig};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    /// Folder holding tokenizer.json (and tokenizer_config.json); default: the checkout's .qwen-tokenizer.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

/// Qwen3-VL's image processor settings (pixel budgets as in the released checkpoints).
const PREPROCESSOR_CONFIG: &str = r#"{
  "image_processor_type": "Qwen2VLImageProcessorFast",
  "do_resize": true, "do_rescale": true, "do_normalize": true, "do_convert_rgb": true,
  "rescale_factor": 0.00392156862745098,
  "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
  "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
  "size": {"shortest_edge": 65536, "longest_edge": 16777216}
}
"#;

fn main() -> Result<()> {
    let args = Args::parse();
    let tokenizer_dir = args.tokenizer.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.qwen-tokenizer"));
    let tokenizer = tokenizer_dir.join("tokenizer.json");
    anyhow::ensure!(tokenizer.is_file(), "{} is missing: run `bash tools/setup.sh` or pass --tokenizer DIR", tokenizer.display());
    tch::manual_seed(args.seed);
    let model = Qwen3VL::new(&Qwen3VLConfig::tiny(), tch::Device::Cpu)?;
    // transformers' initialisation (initializer_range 0.02): matrices and embeddings
    // N(0, 0.02), biases 0, norms 1. tch's defaults (unit-variance embeddings) start a
    // tied 151k vocabulary at a loss near 26 instead of ln(151936) = 11.9.
    tch::no_grad(|| {
        for (name, mut t) in model.vs.variables() {
            if t.dim() >= 2 {
                let _ = t.normal_(0.0, 0.02);
            } else if name.ends_with(".bias") {
                let _ = t.zero_();
            }
        }
    });
    model.save_pretrained(&args.out, u64::MAX).with_context(|| format!("writing {}", args.out.display()))?;
    std::fs::copy(&tokenizer, args.out.join("tokenizer.json"))?;
    let tokenizer_config = tokenizer_dir.join("tokenizer_config.json");
    if tokenizer_config.is_file() {
        std::fs::copy(&tokenizer_config, args.out.join("tokenizer_config.json"))?;
    }
    std::fs::write(args.out.join("preprocessor_config.json"), PREPROCESSOR_CONFIG)?;
    println!("wrote a tiny random Qwen3-VL checkpoint to {}", args.out.display());
    Ok(())
}
