//! The training loop, top to bottom: optional SFT warm start (`sft.rs`), then DRPO / GRPO
//! steps (`rl_step.rs`), validation (`validation.rs`) and checkpoints between them.
//!
//! One RL step (drpo.md sections 1-2), each phase's records typed in `rollout.rs`:
//! 1. gen: sample G responses for each of P prompts, no grad (`Sampled`)
//! 2. reward: score every response (F1, IoU, format, length, Jaccard; weighted sum r)
//!    (`Scored`)
//! 3. old_log_prob / ref: log-probs under the rollout policy (and the reference model)
//!    (`LogProbs`)
//! 4. adv: A = DRPO(r) over the whole batch (the ranks exchange `RolloutRecord`s; each
//!    gets its advantage: `Advantaged`, and each of this rank's responses: `Ready`)
//! 5. update_actor: one PPO epoch, P / prompts_per_update optimizer steps, each
//!    accumulating gradients over micro-batches of the loss of `loss.rs`
//!
//! Metric names follow verl / EasyR1 (`actor/pg_loss`, `timing_s/gen`, ...), plus the DRPO
//! figures per domain (`drpo/<domain>/...`); see `metrics.rs`.
//!
//! Across ranks (`parallel.rs`): each rank generates, scores and trains on its share of
//! the global batch; step 4 gathers every rank's rewards, groups and lengths first, so
//! the advantages, the loss normaliser and the logged figures are the global batch's.
//! Rank 0 alone writes logs, rollouts and checkpoints.

use std::path::PathBuf;

use qoq_data::preprocess::ImageProcessor;
use qoq_data::Loader;
use qoq_policy::chat::Tokenizer;
use qoq_policy::{load_policy, EcgInit, Policy, SpecialTokens};
use qoq_rewards::Scorer;
use tch::{Device, Kind, Tensor};

use crate::advantage::DrpoHistory;
use crate::checkpoint::{self, Resume, TrainerState};
use crate::config::{Dtype, GradDtype, Sharding, TrainConfig};
use crate::fsdp::{FlatShards, Level};
use crate::parallel::{DataParallel, Optimizer};
use crate::precision::MasterWeights;
use crate::tensorboard::EventWriter;
use crate::TrainError;
use qoq_policy::gate::{ParamGate, WholeModel};

pub use crate::metrics::Metrics;

/// The policy, its data, reward and optimizer, and where the run stands. The steps live
/// in `sft.rs` and `rl_step.rs`, the prompts of a step in `data.rs`.
pub struct Trainer {
    pub config: TrainConfig,
    pub(crate) device: Device,
    pub(crate) policy: Box<dyn Policy>,
    pub(crate) reference: Option<Box<dyn Policy>>,
    /// The reference model's shards, with `distributed.sharding = "full"`.
    pub(crate) reference_shards: Option<FlatShards>,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) processor: ImageProcessor,
    pub(crate) scorer: Scorer,
    pub(crate) loader: Loader,
    pub(crate) optimizer: Optimizer,
    /// With bf16: the fp32 masters the optimizer updates (`precision.rs`).
    pub(crate) masters: Option<MasterWeights>,
    pub(crate) dp: DataParallel,
    pub(crate) state: TrainerState,
    /// Rank 0's TensorBoard events (the other ranks log nothing).
    pub(crate) events: Option<EventWriter>,
    pub(crate) out: PathBuf,
    pub(crate) tokens: SpecialTokens,
    pub(crate) prompts_skipped: u64,
    /// The latest validation figures (step, metrics).
    pub(crate) last_validation: Option<(u64, Metrics)>,
    /// The validation at the end of the SFT phase, when this invocation ran it: the RL
    /// phase's held-out effect is the last validation against this one.
    pub(crate) sft_validation: Option<(u64, Metrics)>,
}

impl Trainer {
    /// Loads the policy (from a checkpoint per `resume`: `true` is the latest, see
    /// [`Resume`]), the data and the reward; freezes modules; restores optimizer, cursor
    /// and DRPO history. `dp` says which rank of how many this process is
    /// ([`DataParallel::single`] for one process).
    pub fn new(config: TrainConfig, resume: impl Into<Resume>, dp: DataParallel) -> Result<Self, TrainError> {
        config.check_world(dp.world()).map_err(TrainError::Config)?;
        // "cuda" without an index: each rank takes the GPU of its local rank.
        let device = config.run.device.available(dp.group.local_rank()).map_err(TrainError::Config)?;
        if config.run.threads > 0 {
            tch::set_num_threads(config.run.threads);
        }
        crate::set_trim_freed_memory(config.run.trim_freed_memory);
        let out = config.run.output_dir.clone();
        let ckpt_root = out.join("checkpoints");
        // Checked whole before anything loads (a damaged one names the file and the newest
        // whole checkpoint).
        let resume_from = checkpoint::resume_point(&ckpt_root, &resume.into(), dp.is_main())?;
        let model_dir = match &resume_from {
            Some(dir) => dir.join("model"),
            None => config.model.path.clone(),
        };
        let mut policy = load_policy(&model_dir, device)?;
        // A checkpoint of this run already holds the ECG path it was given.
        let ecg_init = config.model.ecg_encoder.as_deref().map(|v| EcgInit::parse(v, config.run.seed));
        if let (Some(init), None) = (&ecg_init, &resume_from) {
            policy.add_ecg(init, config.model.ecg_encoder_sizes)?;
        }
        let bf16 = config.model.dtype == Dtype::Bfloat16;
        let reference = if config.algorithm.needs_reference() && config.rl.steps > 0 {
            let mut r = load_policy(&config.model.path, device)?;
            // The same start as the policy's (same init, same seed).
            if let Some(init) = &ecg_init {
                r.add_ecg(init, config.model.ecg_encoder_sizes)?;
            }
            if bf16 {
                r.set_kind(Kind::BFloat16);
            }
            r.var_store().variables().values().for_each(|t| {
                let _ = t.shallow_clone().set_requires_grad(false);
            });
            Some(r)
        } else {
            None
        };
        // For flat shards: the dtype the model computes in, and whether its head is the
        // tied embedding (the reference model has the policy's architecture).
        let compute = if bf16 { Kind::BFloat16 } else { Kind::Float };
        let tied = !policy.var_store().variables().contains_key("lm_head.weight");
        // With "full", the reference model is sharded too and gathered for its scoring.
        let reference_shards = match (&reference, dp.sharding) {
            (Some(r), Sharding::Full) => {
                let mut vars: Vec<(String, Tensor)> = r.var_store().variables().into_iter().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                let shards = FlatShards::frozen(vars, tied, dp.group.clone(), compute);
                shards.release_all();
                Some(shards)
            }
            _ => None,
        };
        let mut tokenizer = Tokenizer::from_file(config.model.path.join("tokenizer.json"))?;
        if let Some(ts) = policy.ecg() {
            tokenizer = tokenizer.with_time_series_token(ts.token_id())?;
        }
        // The processor of the model's family (and its preprocessor_config.json), then [processor].
        let base = policy.family().processor_config(&config.model.path)?;
        let processor = ImageProcessor::new(config.processor.resolve_on(base))?;
        let scorer = Scorer::new(&config.reward).map_err(|e| TrainError::Config(format!("[reward]: {e}")))?;
        let (shards, mut loader_config) = config.loader().map_err(TrainError::Config)?;
        // ECGs the encoder cannot take are bad rows (counted against max_bad_fraction).
        loader_config.ecg_encoder = policy.ecg().is_some();
        let mut loader = Loader::open(&shards, loader_config)?;

        let (state, moments) = match &resume_from {
            Some(dir) => {
                let (state, moments) = checkpoint::load(dir)?;
                (state, Some(moments))
            }
            None => (
                TrainerState {
                    version: checkpoint::FORMAT_VERSION,
                    sft_steps_done: 0,
                    rl_steps_done: 0,
                    optimizer_step: 0,
                    cursor: loader.cursor(),
                    drpo: DrpoHistory::default(),
                    seed: config.run.seed,
                },
                None,
            ),
        };
        loader.seek(state.cursor)?;

        policy.freeze(&config.model.freeze);
        // Every rank starts from rank 0's weights (fp32, before any bf16 cast).
        let mut variables: Vec<(String, Tensor)> = policy.var_store().variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        dp.broadcast(&variables.into_iter().map(|(_, t)| t).collect::<Vec<_>>())?;
        let in_sft = state.sft_steps_done < config.sft.steps;
        let optim_config = if in_sft { config.sft.optim.clone() } else { config.rl.optim.clone() };
        let level = match dp.sharding {
            Sharding::Gradients => Some(Level::Gradients),
            Sharding::Full => Some(Level::Full),
            Sharding::None | Sharding::Optimizer => None,
        };
        let (masters, mut optimizer) = match level {
            // The flat shards hold the fp32 masters themselves.
            Some(level) => {
                let reduce = match config.model.grad_dtype {
                    GradDtype::Bfloat16 => Kind::BFloat16,
                    GradDtype::Float32 => Kind::Float,
                };
                let flat = FlatShards::new(
                    level,
                    optim_config,
                    policy.trainable_parameters(),
                    tied,
                    dp.group.clone(),
                    compute,
                    reduce,
                );
                if bf16 {
                    policy.set_kind(Kind::BFloat16);
                }
                flat.release_all();
                (None, Optimizer::Flat(flat))
            }
            None => {
                let masters = bf16.then(|| MasterWeights::new(policy.as_mut(), config.model.grad_dtype));
                let optimizer = Optimizer::new(optim_config, optimized(policy.as_ref(), masters.as_ref()), &dp);
                (masters, optimizer)
            }
        };
        // A checkpoint holds the active phase's optimizer (at the SFT -> RL boundary, the
        // fresh RL one: `run_until` swaps it in before saving).
        if let (Some(dir), Some(moments)) = (&resume_from, &moments) {
            optimizer
                .load_state(moments, state.optimizer_step, &dp)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
        }

        // A run that trains nothing (the `eval` tool's) logs nothing.
        let events = if dp.is_main() && config.sft.steps + config.rl.steps > 0 {
            Some(
                EventWriter::create(&out.join("tensorboard"))
                    .map_err(|e| TrainError::io(&out.join("tensorboard"), e))?,
            )
        } else {
            None
        };
        // Stop, banned and pad ids come from the family and the tokenizer.
        let tokens = policy.special_tokens().clone().with_tokenizer(&tokenizer);
        Ok(Self {
            config,
            device,
            policy,
            reference,
            reference_shards,
            tokenizer,
            processor,
            scorer,
            loader,
            optimizer,
            masters,
            dp,
            state,
            events,
            out,
            tokens,
            prompts_skipped: 0,
            last_validation: None,
            sft_validation: None,
        })
    }

    /// Bytes of optimizer state (AdamW moments) this rank holds.
    pub fn optimizer_state_bytes(&self) -> usize {
        self.optimizer.state_bytes()
    }

    /// Global steps (SFT, then RL) done so far, counting those of a resumed checkpoint.
    pub fn steps_done(&self) -> u64 {
        self.state.step()
    }

    /// The device the policy computes on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The latest validation figures: (global step, metrics).
    pub fn last_validation(&self) -> Option<&(u64, Metrics)> {
        self.last_validation.as_ref()
    }

    /// The validation at the end of the SFT phase, if this invocation ran it.
    pub fn sft_validation(&self) -> Option<&(u64, Metrics)> {
        self.sft_validation.as_ref()
    }

    /// SFT steps plus RL steps of the config.
    pub fn total_steps(&self) -> u64 {
        self.config.sft.steps + self.config.rl.steps
    }

    /// Runs the remaining steps; `on_step` sees each step's metrics (the progress bar).
    pub fn run(&mut self, on_step: impl FnMut(u64, &Metrics)) -> Result<(), TrainError> {
        self.run_until(None, on_step)
    }

    /// As [`Self::run`], stopping after global step `limit` (a checkpoint is written there).
    pub fn run_until(&mut self, limit: Option<u64>, mut on_step: impl FnMut(u64, &Metrics)) -> Result<(), TrainError> {
        let validate_every = self.config.validation.every;
        if validate_every > 0 && self.state.step() == 0 {
            let m = self.validate()?;
            self.log(0, &m)?;
            self.last_validation = Some((0, m));
        }
        let end = limit.unwrap_or(u64::MAX).min(self.total_steps());
        while self.state.step() < end {
            let in_sft = self.state.sft_steps_done < self.config.sft.steps;
            let metrics = if in_sft { self.sft_step()? } else { self.rl_step()? };
            crate::release_freed_memory();
            let step = self.state.step();
            self.log(step, &metrics)?;
            on_step(step, &metrics);
            // Entering RL: a fresh optimizer with the RL settings.
            if in_sft && self.state.sft_steps_done == self.config.sft.steps {
                match &mut self.optimizer {
                    Optimizer::Flat(flat) => flat.reset_optimizer(self.config.rl.optim.clone()),
                    _ => {
                        self.optimizer = Optimizer::new(
                            self.config.rl.optim.clone(),
                            optimized(self.policy.as_ref(), self.masters.as_ref()),
                            &self.dp,
                        )
                    }
                }
            }
            let last = step == end;
            // Also at the end of SFT, so the RL phase's effect shows against its start.
            let sft_done = in_sft && self.state.sft_steps_done == self.config.sft.steps && self.config.rl.steps > 0;
            if validate_every > 0
                && (sft_done || (!in_sft && self.state.rl_steps_done.is_multiple_of(validate_every)) || last)
            {
                let m = self.validate()?;
                self.log(step, &m)?;
                if sft_done {
                    self.sft_validation = Some((step, m.clone()));
                }
                self.last_validation = Some((step, m));
            }
            if step.is_multiple_of(self.config.run.save_every) || last {
                self.save()?;
            }
        }
        match &mut self.events {
            Some(events) => events.flush().map_err(|e| TrainError::io(events.path(), e)),
            None => Ok(()),
        }
    }

    fn log(&mut self, step: u64, metrics: &Metrics) -> Result<(), TrainError> {
        let Some(events) = &mut self.events else { return Ok(()) };
        let values: Vec<(String, f64)> = metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
        events.scalars(step as i64, &values).map_err(|e| TrainError::io(events.path(), e))?;
        events.flush().map_err(|e| TrainError::io(events.path(), e))
    }

    /// Writes a checkpoint (rank 0; every rank must call this). Returns its folder on rank 0.
    pub fn save(&mut self) -> Result<Option<PathBuf>, TrainError> {
        self.state.cursor = self.loader.cursor();
        self.state.optimizer_step = self.optimizer.steps();
        if let Some(flat) = self.optimizer.flat() {
            return self.save_sharded(flat);
        }
        let moments = self.optimizer.state_tensors(&self.dp)?;
        self.dp.check_replicas(self.optimizer.params().into_iter())?;
        let written = if self.dp.is_main() {
            let (policy, masters) = (&self.policy, &self.masters);
            let write = |dir: &std::path::Path| policy.save_pretrained(dir, checkpoint::MODEL_SHARD_BYTES);
            Some(checkpoint::save(
                &self.out.join("checkpoints"),
                &self.state,
                // With bf16, the fp32 masters are what the checkpoint holds.
                |dir| match masters {
                    Some(m) => m.with_masters_in_place(|| write(dir)).map_err(TrainError::from),
                    None => write(dir).map_err(TrainError::from),
                },
                &self.config.model.path,
                &moments,
                self.config.run.keep_checkpoints,
            )?)
        } else {
            None
        };
        // Nobody runs ahead of a checkpoint that failed to write.
        self.dp.group.barrier()?;
        Ok(written)
    }
}

impl Trainer {
    /// What the update calls around each unit: the flat shards' collectives, or nothing.
    pub(crate) fn gate(&self) -> &dyn ParamGate {
        match self.optimizer.flat() {
            Some(flat) => flat,
            None => &WholeModel,
        }
    }

    /// The whole policy on every rank until the guard drops (rollouts, scoring); a no-op
    /// unless the parameters are sharded. Every rank must call it.
    pub(crate) fn whole_policy(&self) -> Result<WholePolicy<'_>, TrainError> {
        whole(self.optimizer.flat())
    }

    /// The same for the reference model (its scoring).
    pub(crate) fn whole_reference(&self) -> Result<WholePolicy<'_>, TrainError> {
        whole(self.reference_shards.as_ref())
    }

    /// With sharded gradients, every rank must run as many micro-batches as the rank with
    /// the most (each reduces unit by unit): this rank's missing ones, as idle passes.
    pub(crate) fn idle_micro_batches(&self, mine: usize) -> Result<(), TrainError> {
        let Some(flat) = self.optimizer.flat() else { return Ok(()) };
        let most = self.dp.gather(&mine)?.into_iter().max().unwrap_or(mine);
        let layers = self.policy.text_model().layers.len();
        for _ in mine..most {
            qoq_policy::idle_update(layers, &self.config.memory.update_options(), flat)?;
        }
        Ok(())
    }

    /// After each micro-batch's backward (moves bf16 gradients to the fp32 masters).
    pub(crate) fn after_backward(&self) {
        if let Some(m) = &self.masters {
            m.after_backward();
        }
    }

    /// Reduces the gradients over the ranks, clips, updates (the masters with bf16, then
    /// the bf16 weights from them). Returns the gradient norm before clipping.
    pub(crate) fn optimizer_step(&mut self, lr: f64) -> Result<f64, TrainError> {
        if let Some(m) = &self.masters {
            m.before_step();
        }
        let norm = self.optimizer.step(lr, &self.dp)?;
        if let Some(m) = &self.masters {
            m.after_step();
        }
        Ok(norm)
    }
}

/// What the optimizer updates: the fp32 masters with bf16, else the trainable weights.
fn optimized(policy: &dyn Policy, masters: Option<&MasterWeights>) -> Vec<(String, Tensor)> {
    match masters {
        Some(m) => m.named_masters(),
        None => policy.trainable_parameters(),
    }
}

fn whole(flat: Option<&FlatShards>) -> Result<WholePolicy<'_>, TrainError> {
    if let Some(f) = flat {
        f.gather_all()?;
    }
    Ok(WholePolicy(flat))
}

/// Keeps the sharded policy gathered while alive ([`Trainer::whole_policy`]).
pub(crate) struct WholePolicy<'a>(Option<&'a FlatShards>);

impl Drop for WholePolicy<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.release_all();
        }
    }
}
