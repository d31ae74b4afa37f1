//! Export a training checkpoint as a Hugging Face folder of its family (Qwen3-VL or Qwen2.5-VL).
//!
//!     cargo run --release --bin export -- --checkpoint OUTPUT_DIR/checkpoints/step_N --out HF_DIR
//!
//! Writes config.json, sharded safetensors with their index, and the tokenizer, processor
//! and chat-template files the checkpoint carries from the source model, in the weight
//! layout the model was loaded from. transformers' `Qwen3VLForConditionalGeneration` or
//! `Qwen2_5_VLForConditionalGeneration.from_pretrained(HF_DIR)` and `diagnose --model HF_DIR`
//! load it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qoq_policy::load_policy;
use qoq_train::checkpoint::MODEL_SIDE_FILES;

#[derive(Parser)]
#[command(about = "Export a training checkpoint as a Hugging Face folder")]
struct Args {
    /// A checkpoint folder (OUTPUT_DIR/checkpoints/step_N).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The folder to write (created; must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Largest safetensors shard in bytes (transformers' default 5 GB).
    #[arg(long, default_value_t = qoq_policy::weights::DEFAULT_MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
    /// Write the weights as bfloat16 (as released Qwen checkpoints are).
    #[arg(long)]
    bf16: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let model_dir = args.checkpoint.join("model");
    if !args.checkpoint.join("trainer_state.json").is_file() || !model_dir.join("config.json").is_file() {
        bail!(
            "{} is not a complete training checkpoint (expected trainer_state.json and model/config.json)",
            args.checkpoint.display()
        );
    }
    if args.out.exists()
        && std::fs::read_dir(&args.out).with_context(|| format!("reading {}", args.out.display()))?.next().is_some()
    {
        bail!("{} exists and is not empty: choose a new folder", args.out.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut model =
        load_policy(&model_dir, tch::Device::Cpu).with_context(|| format!("loading {}", model_dir.display()))?;
    if args.bf16 {
        model.set_kind(tch::Kind::BFloat16);
    }
    model
        .save_pretrained(&args.out, args.max_shard_bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let mut copied = Vec::new();
    for name in MODEL_SIDE_FILES {
        let from = model_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, args.out.join(name)).with_context(|| format!("copying {}", from.display()))?;
            copied.push(name);
        }
    }
    if !copied.contains(&"tokenizer.json") {
        eprintln!(
            "warning: the checkpoint carries no tokenizer.json; copy the base model's tokenizer files into {}",
            args.out.display()
        );
    }
    if !copied.iter().any(|n| n.starts_with("chat_template")) {
        eprintln!(
            "warning: the source model had no chat_template.json / .jinja; copy the base model's into {}",
            args.out.display()
        );
    }
    println!("exported {} to {} ({})", args.checkpoint.display(), args.out.display(), copied.join(", "));
    Ok(())
}
