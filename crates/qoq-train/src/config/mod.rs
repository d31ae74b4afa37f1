//! The training configuration: one TOML file, every table and key documented in
//! `configs/stage2.toml`. Unknown keys are errors naming the key; values are validated
//! before any work starts.
//!
//! A file may start from another: `base = "stage2.toml"` (relative to the file) reads that
//! file first and lays this one's keys over it, key by key within every table (a table in
//! both is merged; any other value replaces the base's). Bases can chain. Keys that exclude
//! each other replace each other too: `reward.weights` over a base's `reward.preset` (or the
//! reverse) drops the base's, so a file can reweigh its base's rewards.
//!
//! The tables' types live in `sections.rs` and `device.rs`; this file reads a file (with
//! its bases) and checks the whole.

mod device;
mod sections;

use std::path::{Path, PathBuf};

use qoq_data::preprocess::ImageProcessorConfig;
use qoq_data::run_config::{loader_from_table, ProcessorConfig};
use qoq_data::LoaderConfig;
use qoq_rewards::RewardConfig;
use serde::Deserialize;

pub use device::DeviceConfig;
pub use sections::*;

use crate::TrainError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunSection,
    pub model: ModelSection,
    /// The loader's `[data]` table (see configs/data/synthetic.toml) plus `shards`.
    pub data: toml::Table,
    #[serde(default)]
    pub processor: ProcessorConfig,
    #[serde(default)]
    pub prompt: PromptSection,
    #[serde(default)]
    pub sft: SftSection,
    #[serde(default)]
    pub rl: RlSection,
    #[serde(default)]
    pub algorithm: AlgorithmSection,
    #[serde(default)]
    pub reward: RewardConfig,
    #[serde(default)]
    pub validation: ValidationSection,
    #[serde(default)]
    pub distributed: DistributedSection,
    #[serde(default)]
    pub memory: MemorySection,
}

impl TrainConfig {
    /// Reads and validates `path` (with its `base` files), including what this machine must
    /// provide (the model folder, the device). Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let config = Self::parse_file(path)?;
        config.check(true).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        // (`eval` builds a run that trains nothing on purpose; a training run must train.)
        if config.sft.steps == 0 && config.rl.steps == 0 {
            return Err(TrainError::Config(format!(
                "{}: nothing to do: sft.steps and rl.steps are both 0",
                path.display()
            )));
        }
        Ok(config)
    }

    /// Reads `path`, resolving `base`, without checking values (see [`Self::check`]).
    pub fn parse_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        if !table.contains_key("base") {
            // Straight from the text: errors point at the line.
            return toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())));
        }
        let mut chain = vec![path.to_path_buf()];
        let merged = with_base(path, table, &mut chain).map_err(TrainError::Config)?;
        let files: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e| TrainError::Config(format!("{} (over {}): {e}", path.display(), files[1..].join(" over "))))
    }

    /// The shard folder and loader settings of `[data]`; training cycles through the
    /// data unless `data.epochs` bounds it.
    pub fn loader(&self) -> Result<(PathBuf, LoaderConfig), String> {
        let (shards, mut loader) = loader_from_table(self.data.clone())?;
        if !self.data.contains_key("epochs") {
            loader.epochs = None;
        }
        Ok((shards, loader))
    }

    pub fn processor(&self) -> ImageProcessorConfig {
        self.processor.resolve()
    }

    /// Checks that the batches split evenly over `world` ranks.
    pub fn check_world(&self, world: usize) -> Result<(), String> {
        if world <= 1 {
            return Ok(());
        }
        if self.sft.steps > 0 && !self.sft.batch_size.is_multiple_of(world) {
            return Err(format!(
                "sft.batch_size ({}) must be a multiple of the number of ranks ({world})",
                self.sft.batch_size
            ));
        }
        if self.rl.steps > 0 && !self.rl.prompts_per_update.is_multiple_of(world) {
            return Err(format!(
                "rl.prompts_per_update ({}) must be a multiple of the number of ranks ({world}): each optimizer step's prompts are split evenly",
                self.rl.prompts_per_update
            ));
        }
        Ok(())
    }

    /// Checks every value; with `local`, also what this machine must provide: the model
    /// folder, and the device (CUDA in this build of libtorch, enough GPUs).
    pub fn check(&self, local: bool) -> Result<(), String> {
        self.loader()?;
        self.processor().validate().map_err(|e| format!("[processor]: {e}"))?;
        let model = &self.model;
        if model.dtype == Dtype::Float32 && model.grad_dtype == GradDtype::Bfloat16 {
            return Err("model.grad_dtype = \"bfloat16\" needs model.dtype = \"bfloat16\"".into());
        }
        if let Some(sizes) = &model.ecg_encoder_sizes {
            if model.ecg_encoder.as_deref() != Some("random") {
                return Err("model.ecg_encoder_sizes sets the sizes of a random ECG encoder: it needs \
                            model.ecg_encoder = \"random\" (a checkpoint's encoder has its own)"
                    .into());
            }
            sizes.validate().map_err(|e| format!("model.ecg_encoder_sizes: {e}"))?;
        }
        let d = &self.distributed;
        if d.sharded_optimizer && !matches!(d.sharding, Sharding::None | Sharding::Optimizer) {
            return Err(format!(
                "distributed.sharded_optimizer = true and distributed.sharding = \"{}\" disagree; keep only `sharding`",
                serde_json::to_value(d.sharding).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            ));
        }
        if self.memory.logits_chunk_tokens < 1 {
            return Err(format!(
                "memory.logits_chunk_tokens must be at least 1, got {}",
                self.memory.logits_chunk_tokens
            ));
        }
        for (key, budget) in [
            ("sft.micro_batch_tokens", self.sft.micro_batch_tokens),
            ("rl.micro_batch_tokens", self.rl.micro_batch_tokens),
        ] {
            if budget == Some(0) {
                return Err(format!("{key} must be at least 1 (leave it out to batch by rows)"));
            }
        }
        if self.sft.steps > 0 {
            self.sft.optim.validate("sft.optim")?;
            at_least_one(&[("sft.batch_size", self.sft.batch_size), ("sft.micro_batch", self.sft.micro_batch)])?;
        }
        let rl = &self.rl;
        if rl.steps > 0 {
            rl.optim.validate("rl.optim")?;
            at_least_one(&[
                ("rl.prompts_per_step", rl.prompts_per_step),
                ("rl.prompts_per_update", rl.prompts_per_update),
                ("rl.micro_batch", rl.micro_batch),
                ("rl.generation_batch", rl.generation_batch),
            ])?;
            if let Some(slots) = rl.rollout_slots.filter(|&s| s < rl.samples_per_prompt) {
                return Err(format!(
                    "rl.rollout_slots ({slots}) must be at least rl.samples_per_prompt ({}): a prompt's samples decode together",
                    rl.samples_per_prompt
                ));
            }
            if let Some(gb) = rl.kv_cache_gb.filter(|g| !(g.is_finite() && *g > 0.0)) {
                return Err(format!("rl.kv_cache_gb must be a positive number of GiB, got {gb}"));
            }
            if !rl.prompts_per_step.is_multiple_of(rl.prompts_per_update) {
                return Err(format!(
                    "rl.prompts_per_step ({}) must be a multiple of rl.prompts_per_update ({})",
                    rl.prompts_per_step, rl.prompts_per_update
                ));
            }
        }
        self.check_sampling()?;
        self.algorithm.advantages.validate()?;
        self.algorithm.loss.validate()?;
        self.reward.resolved_weights().map_err(|e| format!("[reward]: {e}"))?;
        let d = &self.distributed;
        at_least_one(&[("distributed.bucket_mb", d.bucket_mb), ("distributed.timeout_s", d.timeout_s as usize)])?;
        if self.run.save_every == 0 {
            return Err("run.save_every must be at least 1, got 0".into());
        }
        if local {
            if !model.path.join("config.json").is_file() {
                return Err(format!(
                    "model.path: {} has no config.json (a Hugging Face Qwen3-VL folder is expected)",
                    model.path.display()
                ));
            }
            if !model.path.join("tokenizer.json").is_file() {
                return Err(format!("model.path: {} has no tokenizer.json", model.path.display()));
            }
            self.run.device.available(0)?;
        }
        Ok(())
    }

    /// The sampling values of `[rl]` (also read by validation: top_k, top_p, the default
    /// max_new_tokens) and `[validation]`, whether or not their phase runs.
    fn check_sampling(&self) -> Result<(), String> {
        let rl = &self.rl;
        if !(rl.temperature > 0.0 && rl.temperature.is_finite()) {
            return Err(format!(
                "rl.temperature must be positive and finite (it divides the logits), got {}",
                rl.temperature
            ));
        }
        if !(rl.top_p > 0.0 && rl.top_p <= 1.0) {
            return Err(format!("rl.top_p must be in (0, 1] (1: off), got {}", rl.top_p));
        }
        if rl.top_k < 0 {
            return Err(format!("rl.top_k must be 0 (off) or a positive number of tokens, got {}", rl.top_k));
        }
        if rl.max_new_tokens == 0 {
            return Err("rl.max_new_tokens must be at least 1, got 0".into());
        }
        let least = self.algorithm.advantages.estimator.min_samples_per_prompt();
        if rl.samples_per_prompt < least {
            return Err(format!(
                "rl.samples_per_prompt must be at least {least} for {} advantages (each response is scored against its group's mean), got {}",
                self.algorithm.advantages.estimator.name(),
                rl.samples_per_prompt
            ));
        }
        let v = &self.validation;
        if !(v.temperature >= 0.0 && v.temperature.is_finite()) {
            return Err(format!("validation.temperature must be >= 0 and finite (0: greedy), got {}", v.temperature));
        }
        if v.max_new_tokens == Some(0) {
            return Err("validation.max_new_tokens must be at least 1 (omit it for rl.max_new_tokens), got 0".into());
        }
        at_least_one(&[("validation.max_samples", v.max_samples), ("validation.batch_size", v.batch_size)])?;
        if v.every > 0 && v.splits.is_empty() {
            return Err("validation.splits must name at least one split, got []".into());
        }
        Ok(())
    }
}

fn at_least_one(values: &[(&str, usize)]) -> Result<(), String> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((key, v)) => Err(format!("{key} must be at least 1, got {v}")),
        None => Ok(()),
    }
}

/// `table` (read from `path`) laid over its `base` file, recursively. `chain` holds the
/// files read so far (a file that is its own base is an error).
fn with_base(path: &Path, mut table: toml::Table, chain: &mut Vec<PathBuf>) -> Result<toml::Table, String> {
    let Some(base) = table.remove("base") else { return Ok(table) };
    let toml::Value::String(base) = base else {
        return Err(format!(
            "{}: base must be a path string (relative to this file), got {}",
            path.display(),
            base.type_str()
        ));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
    let text = std::fs::read_to_string(&base_path)
        .map_err(|e| format!("{}: base = {base:?}: {}: {e}", path.display(), base_path.display()))?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if chain.iter().any(|p| same(p, &base_path)) {
        return Err(format!(
            "{}: base = {base:?}: {} is already in the chain of bases (a cycle)",
            path.display(),
            base_path.display()
        ));
    }
    let base_table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", base_path.display()))?;
    chain.push(base_path.clone());
    let mut merged = with_base(&base_path, base_table, chain)?;
    overlay(&mut merged, table);
    Ok(merged)
}

/// Keys of one table that exclude each other ([`RewardConfig`]: a preset or explicit
/// weights): a file setting one drops its base's other.
const EXCLUSIVE_KEYS: [(&str, [&str; 2]); 1] = [("reward", ["preset", "weights"])];

/// Lays `over` on `base` key by key: tables in both merge, anything else replaces.
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (table, keys) in EXCLUSIVE_KEYS {
        if let (Some(toml::Value::Table(b)), Some(toml::Value::Table(o))) = (base.get_mut(table), over.get(table)) {
            for (set, dropped) in [(keys[0], keys[1]), (keys[1], keys[0])] {
                if o.contains_key(set) && !o.contains_key(dropped) {
                    b.remove(dropped);
                }
            }
        }
    }
    overlay_keys(base, over);
}

fn overlay_keys(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => overlay_keys(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
