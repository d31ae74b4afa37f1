//! The training configuration: one TOML file, every table and key documented in
//! `configs/stage2.toml`. Unknown keys are errors naming the key; values are validated
//! before any work starts.
//!
//! A file may start from another: `base = "stage2.toml"` (relative to the file) reads that
//! file first and lays this one's keys over it, key by key within every table (a table in
//! both is merged; any other value replaces the base's). Bases can chain.

use std::fmt;
use std::path::{Path, PathBuf};

use qoq_data::preprocess::ImageProcessorConfig;
use qoq_data::run_config::{loader_from_table, ProcessorConfig};
use qoq_data::LoaderConfig;
use qoq_policy::ModuleGroup;
use qoq_rewards::RewardConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::advantage::{AdvantageConfig, Estimator};
use crate::loss::LossConfig;
use crate::optim::OptimConfig;
use crate::prompts::{DomainKey, DEFAULT_SUFFIX};
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

/// `[memory]`: how the update's forward and backward spend memory. Neither setting changes
/// the gradients beyond float rounding (tested to 1e-6 in fp32).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySection {
    /// Keep only each decoder layer's input in the forward and recompute the layer in the
    /// backward (activation checkpointing): activations of one layer instead of all.
    pub recompute: bool,
    /// Response tokens per head / log-softmax chunk: the largest logits tensor is
    /// `[logits_chunk_tokens, vocab]` fp32 instead of `[micro_batch, T, vocab]`.
    pub logits_chunk_tokens: i64,
}

impl Default for MemorySection {
    fn default() -> Self {
        Self { recompute: true, logits_chunk_tokens: qoq_policy::DEFAULT_CHUNK_TOKENS }
    }
}

impl MemorySection {
    /// The policy's view of these settings.
    pub fn update_options(&self) -> qoq_policy::UpdateOptions {
        qoq_policy::UpdateOptions { chunk_tokens: self.logits_chunk_tokens, recompute: self.recompute }
    }
}

/// Settings for runs on several ranks (`torchrun` or `train --nproc N`); a single
/// process ignores them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// Shard the AdamW moments across ranks (ZeRO stage 1).
    pub sharded_optimizer: bool,
    /// Gradient bucket size in MiB of fp32 (one collective per bucket).
    pub bucket_mb: usize,
    /// A collective that waits longer than this fails (naming it and the silent rank).
    /// It must exceed the longest gap between collectives (a generation phase).
    pub timeout_s: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self { sharded_optimizer: false, bucket_mb: crate::parallel::DEFAULT_BUCKET_MIB, timeout_s: 1800 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default)]
    pub device: DeviceConfig,
    /// libtorch intra-op threads (0: libtorch's default).
    #[serde(default)]
    pub threads: i32,
    /// Write a checkpoint every this many steps (and at the end).
    #[serde(default = "twenty")]
    pub save_every: u64,
    /// Keep this many latest checkpoints (0: all).
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Write OUTPUT_DIR/rollouts/step_N.jsonl every this many RL steps (0: never).
    #[serde(default = "one")]
    pub rollouts_every: u64,
    /// Log an image of a rollout with its predicted and true boxes every this many RL steps (0: never).
    #[serde(default = "ten")]
    pub image_summary_every: u64,
}

/// `run.device`: "cpu", "cuda" or "cuda:N".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceConfig {
    #[default]
    Cpu,
    /// "cuda": each rank takes the GPU of its local rank (GPU 0 for a single process).
    Cuda,
    /// "cuda:N": GPU N on every rank.
    CudaIndex(usize),
}

impl TryFrom<String> for DeviceConfig {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for DeviceConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceConfig::Cpu),
            "cuda" => Ok(DeviceConfig::Cuda),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceConfig::CudaIndex)
                .ok_or_else(|| format!("run.device must be \"cpu\", \"cuda\" or \"cuda:N\", got {s:?}")),
        }
    }
}

impl From<DeviceConfig> for String {
    fn from(d: DeviceConfig) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceConfig::Cpu => write!(f, "cpu"),
            DeviceConfig::Cuda => write!(f, "cuda"),
            DeviceConfig::CudaIndex(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceConfig {
    pub fn is_cuda(self) -> bool {
        !matches!(self, DeviceConfig::Cpu)
    }

    /// The device of the rank with `local_rank` on its machine.
    pub fn device(self, local_rank: usize) -> tch::Device {
        match self {
            DeviceConfig::Cpu => tch::Device::Cpu,
            DeviceConfig::Cuda => tch::Device::Cuda(local_rank),
            DeviceConfig::CudaIndex(n) => tch::Device::Cuda(n),
        }
    }

    /// [`Self::device`], checked against what this build of libtorch and this machine
    /// offer (a CPU-only libtorch has no CUDA at all), so that nothing panics inside tch.
    pub fn available(self, local_rank: usize) -> Result<tch::Device, String> {
        let device = self.device(local_rank);
        let tch::Device::Cuda(index) = device else { return Ok(device) };
        if !tch::Cuda::is_available() {
            return Err(format!(
                "run.device = \"{self}\", but CUDA is not available to this program (a CPU-only libtorch build, or no GPU visible). \
                 Build with CUDA (`bash tools/setup-cuda.sh`, which builds target/cuda/release/train) and run that binary on a GPU machine, \
                 or set run.device = \"cpu\""
            ));
        }
        let count = tch::Cuda::device_count().max(0) as usize;
        if index >= count {
            return Err(format!(
                "run.device = \"{self}\" needs GPU {index}, but this machine has {count} (cuda:0 to cuda:{}){}; set another run.device, or \"cpu\"",
                count.saturating_sub(1),
                if self == DeviceConfig::Cuda { " and \"cuda\" gives each local rank its own" } else { "" }
            ));
        }
        Ok(device)
    }
}

fn one() -> u64 {
    1
}
fn two() -> usize {
    2
}
fn ten() -> u64 {
    10
}
fn twenty() -> u64 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face Qwen3-VL folder: config.json, safetensors, tokenizer.json.
    pub path: PathBuf,
    /// The weights the policy computes with: "float32", or "bfloat16" with fp32 master
    /// weights (`precision.rs`).
    #[serde(default)]
    pub dtype: Dtype,
    /// With bf16: where micro-batch gradients accumulate before the optimizer step
    /// ("float32", the default: each micro-batch's bf16 gradient is added into the fp32
    /// masters' gradient; "bfloat16": summed in bf16 on the weights, moved once per step).
    /// The ranks always reduce fp32 gradients.
    #[serde(default)]
    pub grad_dtype: GradDtype,
    /// Module groups that do not train: "vision_tower", "merger", "llm", "ecg_encoder",
    /// "ecg_projection" (an unknown name fails when the config is read, listing these).
    #[serde(default)]
    pub freeze: Vec<ModuleGroup>,
}

/// `model.dtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Float32,
    /// bf16 compute, fp32 master weights and moments.
    Bfloat16,
}

/// `model.grad_dtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradDtype {
    #[default]
    Float32,
    Bfloat16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptSection {
    /// Appended to every question.
    pub suffix: String,
    /// Longer prompts are skipped (counted in prompt_length/skipped).
    pub max_prompt_tokens: usize,
    /// The sample field DRPO groups by: "domain" or "dataset".
    pub domain_key: DomainKey,
}

impl Default for PromptSection {
    fn default() -> Self {
        Self { suffix: DEFAULT_SUFFIX.into(), max_prompt_tokens: 4096, domain_key: DomainKey::Domain }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Supervised steps on the reference answers before RL (0: none).
    pub steps: u64,
    /// Prompts per SFT step.
    pub batch_size: usize,
    /// Sequences per forward pass (at most, with `micro_batch_tokens`).
    pub micro_batch: usize,
    /// Pack sequences longest first into forward passes of at most this many tokens,
    /// padding counted (`micro_batches.rs`); absent: `micro_batch` sequences in order.
    pub micro_batch_tokens: Option<usize>,
    /// lr defaults to [`SFT_LR`], whether or not the table is written.
    #[serde(deserialize_with = "sft_optim")]
    pub optim: OptimConfig,
}

/// The default SFT learning rate (RL's is [`OptimConfig`]'s own default).
pub const SFT_LR: f64 = 1e-5;

impl Default for SftSection {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: 16,
            micro_batch: 8,
            micro_batch_tokens: None,
            optim: OptimConfig { lr: SFT_LR, ..Default::default() },
        }
    }
}

/// `[sft.optim]`: OptimConfig's defaults, except lr = [`SFT_LR`].
fn sft_optim<'de, D: Deserializer<'de>>(d: D) -> Result<OptimConfig, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    table.entry("lr").or_insert(toml::Value::Float(SFT_LR));
    from_table("sft.optim", table).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlSection {
    /// Rollout steps (each: one rollout batch, then its optimizer steps).
    pub steps: u64,
    /// Prompts per rollout batch.
    pub prompts_per_step: usize,
    /// G: responses per prompt.
    pub samples_per_prompt: usize,
    /// Prompts per optimizer step (prompts_per_step must be a multiple).
    pub prompts_per_update: usize,
    /// Sequences per forward pass in scoring and updates (at most, with
    /// `micro_batch_tokens`).
    pub micro_batch: usize,
    /// Pack sequences longest first into forward passes of at most this many tokens,
    /// padding counted; absent: `micro_batch` sequences in order. Scoring and the update
    /// use the same packing.
    pub micro_batch_tokens: Option<usize>,
    /// Prompts per generate call.
    pub generation_batch: usize,
    /// Sampling temperature (> 0); the log-probs of scoring and updates use it too.
    pub temperature: f64,
    /// Nucleus sampling in (0, 1]; 1: off.
    pub top_p: f64,
    /// 0: off; otherwise sample among the k likeliest tokens.
    pub top_k: i64,
    pub max_new_tokens: usize,
    pub optim: OptimConfig,
}

impl Default for RlSection {
    fn default() -> Self {
        Self {
            steps: 0,
            prompts_per_step: 512,
            samples_per_prompt: 5,
            prompts_per_update: 128,
            micro_batch: 8,
            micro_batch_tokens: None,
            generation_batch: 64,
            temperature: 1.0,
            top_p: 0.99,
            top_k: 0,
            max_new_tokens: 4096,
            optim: OptimConfig::default(),
        }
    }
}

/// The `[algorithm]` table: one flat table whose keys are those of [`AdvantageConfig`]
/// (`advantage`, `sort_group_rewards`, ..., `eps`) and of [`LossConfig`] (`clip_low`, ...,
/// `loss_agg`), each read straight into its type with that type's defaults. Unknown keys
/// are errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlgorithmSection {
    pub advantages: AdvantageConfig,
    pub loss: LossConfig,
}

impl<'de> Deserialize<'de> for AlgorithmSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = toml::Table::deserialize(d)?;
        let known = |k: &str| AdvantageConfig::KEYS.contains(&k) || LossConfig::KEYS.contains(&k);
        if let Some(key) = table.keys().find(|k| !known(k)) {
            let all: Vec<String> =
                AdvantageConfig::KEYS.iter().chain(&LossConfig::KEYS).map(|k| format!("`{k}`")).collect();
            return Err(D::Error::custom(format!("unknown key `algorithm.{key}`, expected one of {}", all.join(", "))));
        }
        let (loss, advantages): (toml::Table, toml::Table) =
            table.into_iter().partition(|(k, _)| LossConfig::KEYS.contains(&k.as_str()));
        Ok(Self {
            advantages: from_table("algorithm", advantages).map_err(D::Error::custom)?,
            loss: from_table("algorithm", loss).map_err(D::Error::custom)?,
        })
    }
}

/// `table` as a `T`; the error names the first key that `T` refuses (`section.key`).
fn from_table<T: DeserializeOwned>(section: &str, table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone()).try_into().map_err(|e: toml::de::Error| {
        let alone = |k: &String, v: &toml::Value| {
            toml::Value::Table(toml::Table::from_iter([(k.clone(), v.clone())])).try_into::<T>().is_err()
        };
        match table.iter().find(|(k, v)| alone(k, v)) {
            Some((key, _)) => format!("{section}.{key}: {}", e.message()),
            None => format!("[{section}]: {}", e.message()),
        }
    })
}

impl AlgorithmSection {
    /// The reference model is needed for the KL term or for KL damping.
    pub fn needs_reference(&self) -> bool {
        self.loss.kl_coef != 0.0 || (self.advantages.kl_damping && self.advantages.estimator == Estimator::Drpo)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    /// Validate every this many RL steps (0: never); also before the first step, at the end
    /// of SFT and after the last step.
    pub every: u64,
    /// Shard folder of the held-out set (default: data.shards).
    pub shards: Option<PathBuf>,
    pub splits: Vec<String>,
    pub max_samples: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub max_new_tokens: Option<usize>,
    pub batch_size: usize,
}

impl Default for ValidationSection {
    fn default() -> Self {
        Self {
            every: 0,
            shards: None,
            splits: vec!["val".into()],
            max_samples: 256,
            temperature: 0.5,
            max_new_tokens: None,
            batch_size: 16,
        }
    }
}

impl TrainConfig {
    /// Reads and validates `path` (with its `base` files), including what this machine must
    /// provide (the model folder, the device). Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let config = Self::parse_file(path)?;
        config.check(true).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
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
        if self.memory.logits_chunk_tokens < 1 {
            return Err(format!(
                "memory.logits_chunk_tokens must be at least 1, got {}",
                self.memory.logits_chunk_tokens
            ));
        }
        if self.sft.steps == 0 && self.rl.steps == 0 {
            return Err("nothing to do: sft.steps and rl.steps are both 0".into());
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

/// Lays `over` on `base` key by key: tables in both merge, anything else replaces.
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => overlay(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}
