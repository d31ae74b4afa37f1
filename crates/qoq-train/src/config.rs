//! The training configuration: one TOML file, every table and key documented in
//! `configs/stage2.toml`. Unknown keys are errors naming the key; values are validated
//! before any work starts.

use std::path::{Path, PathBuf};

use qoq_cli::config::{loader_from_table, ProcessorConfig};
use qoq_data::preprocess::ImageProcessorConfig;
use qoq_data::LoaderConfig;
use qoq_rewards::RewardConfig;
use serde::{Deserialize, Serialize};

use crate::advantage::{AdvantageConfig, DomainMean, Estimator};
use crate::loss::{Aggregation, LossConfig};
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
        Self { sharded_optimizer: false, bucket_mb: 25, timeout_s: 1800 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "cpu")]
    pub device: String,
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

fn cpu() -> String {
    "cpu".into()
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
    /// "float32" or "bfloat16" for the weights the policy computes with.
    #[serde(default = "float32")]
    pub dtype: String,
    /// Modules that do not train: "vision_tower", "merger", "llm".
    #[serde(default)]
    pub freeze: Vec<String>,
}

fn float32() -> String {
    "float32".into()
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
    /// Sequences per forward pass.
    pub micro_batch: usize,
    pub optim: OptimConfig,
}

impl Default for SftSection {
    fn default() -> Self {
        Self { steps: 0, batch_size: 16, micro_batch: 8, optim: OptimConfig { lr: 1e-5, ..Default::default() } }
    }
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
    /// Sequences per forward pass in scoring and updates.
    pub micro_batch: usize,
    /// Prompts per generate call.
    pub generation_batch: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// 0: off.
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
            generation_batch: 64,
            temperature: 1.0,
            top_p: 0.99,
            top_k: 0,
            max_new_tokens: 4096,
            optim: OptimConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmSection {
    /// "grpo", "dr_grpo" or "drpo".
    pub advantage: Estimator,
    pub sort_group_rewards: bool,
    pub history_window: Option<usize>,
    pub k_max: usize,
    pub elbow_tol: f64,
    /// "inverse_cluster_size" (released code) or "plain" (paper).
    pub domain_mean: DomainMean,
    /// false: the DomainOnly ablation.
    pub clusters: bool,
    pub kl_damping: bool,
    pub kl_damping_quantile: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    /// 0 disables dual clipping.
    pub dual_clip: f64,
    /// beta of the k3 KL term in the loss; 0 drops the reference model.
    pub kl_coef: f64,
    /// "token-mean" or "seq-mean-token-mean".
    pub loss_agg: Aggregation,
}

impl Default for AlgorithmSection {
    fn default() -> Self {
        let a = AdvantageConfig::default();
        let l = LossConfig::default();
        Self {
            advantage: a.estimator,
            sort_group_rewards: a.sort_group_rewards,
            history_window: a.history_window,
            k_max: a.k_max,
            elbow_tol: a.elbow_tol,
            domain_mean: a.domain_mean,
            clusters: a.clusters,
            kl_damping: a.kl_damping,
            kl_damping_quantile: a.kl_damping_quantile,
            clip_low: l.clip_low,
            clip_high: l.clip_high,
            dual_clip: l.dual_clip.unwrap_or(0.0),
            kl_coef: l.kl_coef,
            loss_agg: l.aggregation,
        }
    }
}

impl AlgorithmSection {
    pub fn advantage_config(&self) -> AdvantageConfig {
        AdvantageConfig {
            estimator: self.advantage,
            sort_group_rewards: self.sort_group_rewards,
            history_window: self.history_window,
            k_max: self.k_max,
            elbow_tol: self.elbow_tol,
            domain_mean: self.domain_mean,
            clusters: self.clusters,
            kl_damping: self.kl_damping,
            kl_damping_quantile: self.kl_damping_quantile,
            eps: 1e-6,
        }
    }

    pub fn loss_config(&self) -> LossConfig {
        LossConfig {
            clip_low: self.clip_low,
            clip_high: self.clip_high,
            dual_clip: (self.dual_clip > 0.0).then_some(self.dual_clip),
            kl_coef: self.kl_coef,
            aggregation: self.loss_agg,
        }
    }

    /// The reference model is needed for the KL term or for KL damping.
    pub fn needs_reference(&self) -> bool {
        self.kl_coef != 0.0 || (self.kl_damping && self.advantage == Estimator::Drpo)
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
        Self { every: 0, shards: None, splits: vec!["val".into()], max_samples: 256, temperature: 0.5, max_new_tokens: None, batch_size: 16 }
    }
}

impl TrainConfig {
    /// Reads and validates `path`. Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let config: TrainConfig = toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        config.check(true).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
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
            return Err(format!("sft.batch_size ({}) must be a multiple of the number of ranks ({world})", self.sft.batch_size));
        }
        if self.rl.steps > 0 && !self.rl.prompts_per_update.is_multiple_of(world) {
            return Err(format!(
                "rl.prompts_per_update ({}) must be a multiple of the number of ranks ({world}): each optimizer step's prompts are split evenly",
                self.rl.prompts_per_update
            ));
        }
        Ok(())
    }

    /// Checks every value; with `paths`, also that the model folder exists.
    pub fn check(&self, paths: bool) -> Result<(), String> {
        self.loader()?;
        self.processor().validate().map_err(|e| format!("[processor]: {e}"))?;
        let model = &self.model;
        if paths && !model.path.join("config.json").is_file() {
            return Err(format!("model.path: {} has no config.json (a Hugging Face Qwen3-VL folder is expected)", model.path.display()));
        }
        if paths && !model.path.join("tokenizer.json").is_file() {
            return Err(format!("model.path: {} has no tokenizer.json", model.path.display()));
        }
        if model.dtype != "float32" {
            return Err(format!("model.dtype: only \"float32\" trains for now (bf16 with fp32 master weights is not built yet), got {:?}", model.dtype));
        }
        for f in &model.freeze {
            if !["vision_tower", "merger", "llm"].contains(&f.as_str()) {
                return Err(format!("model.freeze: unknown module {f:?} (known: vision_tower, merger, llm)"));
            }
        }
        parse_device(&self.run.device)?;
        if self.sft.steps == 0 && self.rl.steps == 0 {
            return Err("nothing to do: sft.steps and rl.steps are both 0".into());
        }
        if self.sft.steps > 0 {
            self.sft.optim.validate("sft.optim")?;
            if self.sft.batch_size == 0 || self.sft.micro_batch == 0 {
                return Err("sft.batch_size and sft.micro_batch must be at least 1".into());
            }
        }
        let rl = &self.rl;
        if rl.steps > 0 {
            rl.optim.validate("rl.optim")?;
            if rl.prompts_per_step == 0 || rl.prompts_per_update == 0 || rl.micro_batch == 0 || rl.generation_batch == 0 {
                return Err("rl.prompts_per_step, rl.prompts_per_update, rl.micro_batch and rl.generation_batch must be at least 1".into());
            }
            if !rl.prompts_per_step.is_multiple_of(rl.prompts_per_update) {
                return Err(format!(
                    "rl.prompts_per_step ({}) must be a multiple of rl.prompts_per_update ({})",
                    rl.prompts_per_step, rl.prompts_per_update
                ));
            }
            if rl.samples_per_prompt < 2 && self.algorithm.advantage != Estimator::DrGrpo {
                return Err(format!("rl.samples_per_prompt must be at least 2 for group-relative advantages, got {}", rl.samples_per_prompt));
            }
            if rl.max_new_tokens == 0 {
                return Err("rl.max_new_tokens must be at least 1".into());
            }
            if !(rl.temperature > 0.0) {
                return Err(format!("rl.temperature must be positive for sampling, got {}", rl.temperature));
            }
            if !(rl.top_p > 0.0 && rl.top_p <= 1.0) {
                return Err(format!("rl.top_p must be in (0, 1], got {}", rl.top_p));
            }
        }
        self.algorithm.advantage_config().validate()?;
        let a = &self.algorithm;
        if !(a.clip_low > 0.0 && a.clip_low < 1.0) || !(a.clip_high > 0.0) {
            return Err(format!("algorithm.clip_low must be in (0, 1) and clip_high positive, got {} and {}", a.clip_low, a.clip_high));
        }
        if a.dual_clip != 0.0 && a.dual_clip <= 1.0 {
            return Err(format!("algorithm.dual_clip must be above 1 (or 0 to disable), got {}", a.dual_clip));
        }
        if a.kl_coef < 0.0 {
            return Err(format!("algorithm.kl_coef must be non-negative, got {}", a.kl_coef));
        }
        self.reward.resolved_weights().map_err(|e| format!("[reward]: {e}"))?;
        let v = &self.validation;
        if v.every > 0 && (v.max_samples == 0 || v.batch_size == 0) {
            return Err("validation.max_samples and validation.batch_size must be at least 1".into());
        }
        if v.temperature < 0.0 {
            return Err(format!("validation.temperature must be >= 0, got {}", v.temperature));
        }
        let d = &self.distributed;
        if d.bucket_mb == 0 || d.timeout_s == 0 {
            return Err("distributed.bucket_mb and distributed.timeout_s must be at least 1".into());
        }
        if self.run.save_every == 0 {
            return Err("run.save_every must be at least 1".into());
        }
        Ok(())
    }
}

/// "cpu", "cuda", "cuda:N".
pub fn parse_device(s: &str) -> Result<tch::Device, String> {
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("run.device must be \"cpu\", \"cuda\" or \"cuda:N\", got {s:?}")),
    }
}
