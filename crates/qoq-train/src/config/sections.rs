//! The tables of a run config other than `[data]`, `[processor]` and `[reward]` (which
//! the data and reward crates type), each with its defaults.

use std::path::PathBuf;

use qoq_policy::ModuleGroup;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::DeviceConfig;
use crate::advantage::{AdvantageConfig, Estimator};
use crate::loss::LossConfig;
use crate::optim::OptimConfig;
use crate::prompts::{DomainKey, DEFAULT_SUFFIX};

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

/// `distributed.sharding`: what each of N ranks keeps 1/N of.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Everything whole on every rank; gradients all-reduced at the optimizer step.
    #[default]
    None,
    /// The AdamW moments (ZeRO stage 1; `sharded.rs`).
    Optimizer,
    /// Also the fp32 gradients (and masters), reduce-scattered unit by unit during the
    /// backward (ZeRO stage 2; `fsdp.rs`).
    Gradients,
    /// Also the parameters: each unit's are all-gathered just before it runs and freed
    /// after (ZeRO stage 3 / FSDP; `fsdp.rs`).
    Full,
}

/// Settings for runs on several ranks (`torchrun` or `train --nproc N`); a single
/// process ignores them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// What each rank keeps 1/N of.
    pub sharding: Sharding,
    /// The older spelling of `sharding = "optimizer"` (still read).
    pub sharded_optimizer: bool,
    /// Gradient bucket size in MiB of fp32 (one collective per bucket).
    pub bucket_mb: usize,
    /// A collective that waits longer than this fails (naming it and the silent rank).
    /// It must exceed the longest gap between collectives (a generation phase).
    pub timeout_s: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            sharding: Sharding::None,
            sharded_optimizer: false,
            bucket_mb: crate::parallel::DEFAULT_BUCKET_MIB,
            timeout_s: 1800,
        }
    }
}

impl DistributedSection {
    /// The sharding asked for, `sharded_optimizer = true` read as "optimizer".
    pub fn sharding(&self) -> Sharding {
        match (self.sharding, self.sharded_optimizer) {
            (Sharding::None, true) => Sharding::Optimizer,
            (s, _) => s,
        }
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
    /// Hand the heap's freed pages back to the kernel after every step and phase
    /// ([`crate::release_freed_memory`]): caps the heap's creep in bf16, at the cost of
    /// re-faulting those pages (on the fp32 benchmark demo, 45% of the wall time).
    /// `QOQ_TRIM_FREED_MEMORY=0` turns it off whatever this says.
    #[serde(default = "yes")]
    pub trim_freed_memory: bool,
}

fn yes() -> bool {
    true
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
    /// Gives a model without an ECG path one (stage 1): "random" (ECG-JEPA's random start,
    /// seeded by run.seed) or the path of an ECG-JEPA release checkpoint (`epochN.pth`).
    /// The projection starts fresh. Unset: the model's own ECG path, if it has one.
    #[serde(default)]
    pub ecg_encoder: Option<String>,
    /// The sizes of a "random" encoder (default ECG-JEPA's: embed_dim 768, depth 12,
    /// num_heads 16, mlp_dim 3072; leads 8, samples 2500, patch_size 50).
    #[serde(default)]
    pub ecg_encoder_sizes: Option<qoq_policy::EcgEncoderConfig>,
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
    /// Prompts per prefill forward of the rollout engine (vision tower included); with
    /// G, also the default slot count (generation_batch x samples_per_prompt).
    pub generation_batch: usize,
    /// Sequence slots of the rollout engine, whose KV cache is allocated once for them
    /// (each slot holds the longest prompt plus max_new_tokens); absent:
    /// generation_batch x samples_per_prompt. At least samples_per_prompt.
    pub rollout_slots: Option<usize>,
    /// KV budget of the rollout engine in GiB: the slots that fit in it. With
    /// rollout_slots as well, the smaller number of slots wins.
    pub kv_cache_gb: Option<f64>,
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
            rollout_slots: None,
            kv_cache_gb: None,
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
