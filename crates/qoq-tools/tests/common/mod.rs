//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qoq_policy::{Qwen3VL, Qwen3VLConfig};
use tch::Tensor;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tiny model folder (with the real tokenizer) and 48 synthetic samples.
pub fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    let tokenizer = repo().join(".qwen-tokenizer/tokenizer.json");
    assert!(tokenizer.is_file(), "run `bash tools/setup.sh` first (it fetches the Qwen tokenizer)");
    tch::manual_seed(0);
    Qwen3VL::new(&Qwen3VLConfig::tiny(), tch::Device::Cpu).unwrap().save_pretrained(&model, u64::MAX).unwrap();
    std::fs::copy(&tokenizer, model.join("tokenizer.json")).unwrap();
    let shards = dir.join("shards");
    qoq_data::synthetic::write_synthetic(&shards, 48, 0, |_| {}).unwrap();
    (model, shards)
}

pub fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut all: Vec<(String, Tensor)> = files.iter().flat_map(|f| Tensor::read_safetensors(f).unwrap()).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The `[model]`, `[data]`, `[processor]` and `[prompt]` tables of the test runs: the tiny
/// model and synthetic shards of [`setup`], 64 x 64 images.
pub fn inputs_toml(model: &Path, shards: &Path) -> String {
    format!(
        r#"[model]
path = "{model}"

[data]
shards = "{shards}"
splits = ["train"]

[processor]
min_pixels = 4096
max_pixels = 4096

[prompt]
suffix = "Answer."
"#,
        model = model.display(),
        shards = shards.display()
    )
}

/// A short run of [`setup`]'s inputs: 2 SFT steps, then 2 RL steps (2 prompts x G = 2),
/// a checkpoint after every step; `extra` is appended (after `[algorithm]`).
pub fn config_text(out: &Path, model: &Path, shards: &Path, extra: &str) -> String {
    format!(
        r#"
[run]
output_dir = "{out}"
seed = 3
threads = 1
save_every = 1
keep_checkpoints = 0
image_summary_every = 1

{inputs}

[sft]
steps = 2
batch_size = 2
micro_batch = 2
[sft.optim]
lr = 1e-3

[rl]
steps = 2
prompts_per_step = 2
samples_per_prompt = 2
prompts_per_update = 2
micro_batch = 2
generation_batch = 2
max_new_tokens = 6
top_p = 1.0
[rl.optim]
lr = 1e-3

[algorithm]
kl_coef = 0.01
{extra}
"#,
        out = out.display(),
        inputs = inputs_toml(model, shards)
    )
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
