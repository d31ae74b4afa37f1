//! Write a tiny random checkpoint folder of either family that every tool accepts:
//! config.json, model.safetensors, the real Qwen tokenizer (tools/setup.sh fetches Qwen3's
//! and derives Qwen2.5's from it) and preprocessor_config.json. For trying `diagnose` and
//! the trainer without a download.
//!
//!     cargo run --release --bin make-tiny-checkpoint -- --out DIR [--family qwen2_5_vl] [--seed S]
//!     make-tiny-checkpoint --out DIR --config config.json   # random weights of another size

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use qoq_policy::{Family, Policy, Qwen25VL, Qwen25VLConfig, Qwen3VL, Qwen3VLConfig};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    out: PathBuf,
    /// `qwen3_vl` (QoQ-Med3-VL-8B's family) or `qwen2_5_vl` (QoQ-Med-VL-7B's).
    #[arg(long, default_value = "qwen3_vl")]
    family: String,
    /// Folder holding tokenizer.json (and tokenizer_config.json); default: the checkout's
    /// .qwen-tokenizer (Qwen3) or .qwen2.5-tokenizer (Qwen2.5).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// A config.json to build instead of the tiny one (its `model_type` names the family,
    /// overriding --family): random weights of any size, e.g. for memory measurements.
    #[arg(long, value_name = "CONFIG_JSON")]
    config: Option<PathBuf>,
}

/// Qwen2.5-VL-7B-Instruct's image processor settings.
const QWEN2_5_PREPROCESSOR_CONFIG: &str = r#"{
  "image_processor_type": "Qwen2VLImageProcessor",
  "processor_class": "Qwen2_5_VLProcessor",
  "do_resize": true, "do_rescale": true, "do_normalize": true, "do_convert_rgb": true,
  "rescale_factor": 0.00392156862745098,
  "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
  "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
  "min_pixels": 3136, "max_pixels": 12845056
}
"#;

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
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )
        }
        None => None,
    };
    let model_type = match &config {
        Some(c) => c.get("model_type").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
        None => args.family.clone(),
    };
    let family = Family::from_model_type(&model_type).map_err(anyhow::Error::msg)?;
    let default_dir = match family {
        Family::Qwen3Vl => ".qwen-tokenizer",
        Family::Qwen25Vl => ".qwen2.5-tokenizer",
    };
    let tokenizer_dir =
        args.tokenizer.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(default_dir));
    let tokenizer = tokenizer_dir.join("tokenizer.json");
    anyhow::ensure!(
        tokenizer.is_file(),
        "{} is missing: run `bash tools/setup.sh` or pass --tokenizer DIR",
        tokenizer.display()
    );
    tch::manual_seed(args.seed);
    let bad = |e: String| anyhow::anyhow!("{}: {e}", args.config.as_deref().unwrap_or(Path::new("")).display());
    let model: Box<dyn Policy> = match (family, &config) {
        (Family::Qwen3Vl, None) => Box::new(Qwen3VL::new(&Qwen3VLConfig::tiny(), tch::Device::Cpu)?),
        (Family::Qwen25Vl, None) => Box::new(Qwen25VL::new(&Qwen25VLConfig::tiny(), tch::Device::Cpu)?),
        (Family::Qwen3Vl, Some(c)) => {
            Box::new(Qwen3VL::new(&Qwen3VLConfig::from_json(c).map_err(bad)?, tch::Device::Cpu)?)
        }
        (Family::Qwen25Vl, Some(c)) => {
            Box::new(Qwen25VL::new(&Qwen25VLConfig::from_json(c).map_err(bad)?, tch::Device::Cpu)?)
        }
    };
    // transformers' initialisation (initializer_range 0.02): matrices and embeddings
    // N(0, 0.02), biases 0, norms 1. tch's defaults (unit-variance embeddings) start a
    // tied 151k vocabulary at a loss near 26 instead of ln(151936) = 11.9.
    tch::no_grad(|| {
        for (name, mut t) in model.var_store().variables() {
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
    let preprocessor = match family {
        Family::Qwen3Vl => PREPROCESSOR_CONFIG,
        Family::Qwen25Vl => QWEN2_5_PREPROCESSOR_CONFIG,
    };
    std::fs::write(args.out.join("preprocessor_config.json"), preprocessor)?;
    println!("wrote a tiny random {} checkpoint to {}", family.model_type(), args.out.display());
    Ok(())
}
