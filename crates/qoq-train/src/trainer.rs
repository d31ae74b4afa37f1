//! The training loop, top to bottom: optional SFT warm start, then DRPO / GRPO steps.
//!
//! One RL step (drpo.md sections 1-2):
//!   1. gen     sample G responses for each of P prompts (no grad)
//!   2. reward  score every response (F1, IoU, format, length, Jaccard; weighted sum r)
//!   3. old_log_prob / ref   log-probs under the rollout policy (and the reference model)
//!   4. adv     A = DRPO(r) over the whole batch
//!   5. update_actor   one PPO epoch: P / prompts_per_update optimizer steps, each
//!      accumulating gradients over micro-batches of the loss of `loss.rs`
//!
//! Metric names follow verl / EasyR1 (`actor/pg_loss`, `timing_s/gen`, ...), plus the DRPO
//! figures per domain (`drpo/<domain>/...`).
//!
//! Across ranks (`parallel.rs`): each rank generates, scores and trains on its share of
//! the global batch; step 4 gathers every rank's rewards, groups and lengths first, so
//! the advantages, the loss normaliser and the logged figures are the global batch's.
//! Rank 0 alone writes logs, rollouts and checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use qoq_data::preprocess::ImageProcessor;
use qoq_data::{Loader, LoaderConfig, Sample};
use qoq_policy::chat::Tokenizer;
use qoq_policy::{load_policy, ModuleGroup, Policy, SamplingConfig, SpecialTokens};
use qoq_rewards::eval::Evaluator;
use qoq_rewards::{Scorer, Scores, Target};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::advantage::{DrpoHistory, Group};
use crate::checkpoint::{self, Resume, TrainerState};
use crate::config::TrainConfig;
use crate::loss::{batch_normaliser, k3_sum, policy_loss, sft_loss, LossTerms};
use crate::parallel::{DataParallel, Optimizer};
use crate::prompts::{prepare, response_mask, Prompt, PromptBatch};
use crate::summary::rollout_image;
use crate::tensorboard::EventWriter;
use crate::TrainError;

/// The figures of one step, by metric name.
pub type Metrics = BTreeMap<String, f64>;

/// One sampled response and everything computed about it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Index of its prompt in the step's prompt list.
    pub prompt: usize,
    pub tokens: Vec<i64>,
    pub text: String,
    pub stopped: bool,
    pub scores: Scores,
    pub old_logp: Vec<f32>,
    pub ref_logp: Option<Vec<f32>>,
    pub advantage: f64,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub device: Device,
    pub policy: Box<dyn Policy>,
    reference: Option<Box<dyn Policy>>,
    tokenizer: Tokenizer,
    processor: ImageProcessor,
    scorer: Scorer,
    loader: Loader,
    optimizer: Optimizer,
    pub dp: DataParallel,
    pub state: TrainerState,
    /// Rank 0's TensorBoard events (the other ranks log nothing).
    events: Option<EventWriter>,
    out: PathBuf,
    tokens: SpecialTokens,
    prompts_skipped: u64,
    /// The latest validation figures (step, metrics).
    pub last_validation: Option<(u64, Metrics)>,
}

/// Stream seeds per (run seed, step, chunk): a step's draws do not depend on earlier ones.
fn derive_seed(seed: u64, step: u64, chunk: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ chunk.wrapping_mul(0x1656_67B1_9E37_79F9)
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
        let out = config.run.output_dir.clone();
        let ckpt_root = out.join("checkpoints");
        // Checked whole before anything loads (a damaged one names the file and the newest
        // whole checkpoint).
        let resume_from = checkpoint::resume_point(&ckpt_root, &resume.into(), dp.is_main())?;
        let model_dir = match &resume_from {
            Some(dir) => dir.join("model"),
            None => config.model.path.clone(),
        };
        let policy = load_policy(&model_dir, device)?;
        let reference = if config.algorithm.needs_reference() && config.rl.steps > 0 {
            let r = load_policy(&config.model.path, device)?;
            r.var_store().variables().values().for_each(|t| {
                let _ = t.shallow_clone().set_requires_grad(false);
            });
            Some(r)
        } else {
            None
        };
        let tokenizer = Tokenizer::from_file(config.model.path.join("tokenizer.json"))?;
        // The processor of the model's family (and its preprocessor_config.json), then [processor].
        let base = policy.family().processor_config(&config.model.path)?;
        let processor = ImageProcessor::new(config.processor.resolve_on(base))?;
        let scorer = Scorer::new(&config.reward).map_err(|e| TrainError::Config(format!("[reward]: {e}")))?;
        let (shards, loader_config) = config.loader().map_err(TrainError::Config)?;
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

        policy.freeze(&module_groups(&config.model.freeze)?);
        let in_sft = state.sft_steps_done < config.sft.steps;
        let optim_config = if in_sft { config.sft.optim.clone() } else { config.rl.optim.clone() };
        let mut optimizer = Optimizer::new(optim_config, policy.trainable_parameters(), &dp);
        // A checkpoint holds the active phase's optimizer (at the SFT -> RL boundary, the
        // fresh RL one: `run_until` swaps it in before saving).
        if let (Some(dir), Some(moments)) = (&resume_from, &moments) {
            optimizer
                .load_state(moments, state.optimizer_step, &dp)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?;
        }
        // Every rank starts from rank 0's weights.
        let mut variables: Vec<(String, Tensor)> = policy.var_store().variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        dp.broadcast(&variables.into_iter().map(|(_, t)| t).collect::<Vec<_>>())?;

        let events = if dp.is_main() {
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
            tokenizer,
            processor,
            scorer,
            loader,
            optimizer,
            dp,
            state,
            events,
            out,
            tokens,
            prompts_skipped: 0,
            last_validation: None,
        })
    }

    /// Bytes of optimizer state (AdamW moments) this rank holds.
    pub fn optimizer_state_bytes(&self) -> usize {
        self.optimizer.state_bytes()
    }

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
            let step = self.state.step();
            self.log(step, &metrics)?;
            on_step(step, &metrics);
            // Entering RL: a fresh optimizer with the RL settings.
            if in_sft && self.state.sft_steps_done == self.config.sft.steps {
                self.optimizer =
                    Optimizer::new(self.config.rl.optim.clone(), self.policy.trainable_parameters(), &self.dp);
            }
            let last = step == end;
            // Also at the end of SFT, so the RL phase's effect shows against its start.
            let sft_done = in_sft && self.state.sft_steps_done == self.config.sft.steps && self.config.rl.steps > 0;
            if validate_every > 0
                && (sft_done || (!in_sft && self.state.rl_steps_done.is_multiple_of(validate_every)) || last)
            {
                let m = self.validate()?;
                self.log(step, &m)?;
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
        let moments = self.optimizer.state_tensors(&self.dp)?;
        self.dp.check_replicas(self.optimizer.params().into_iter())?;
        let written = if self.dp.is_main() {
            let policy = &self.policy;
            Some(checkpoint::save(
                &self.out.join("checkpoints"),
                &self.state,
                |dir| policy.save_pretrained(dir, checkpoint::MODEL_SHARD_BYTES).map_err(TrainError::from),
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

    /// This rank's prompts of the next global batch of `n` usable prompts, cut in blocks
    /// of `block` (see [`DataParallel::owner`]), with their positions in the batch. Every
    /// rank reads the same samples and prepares only those it will train on; prompts over
    /// the length limit are skipped (and counted) exactly as one process would skip them.
    fn next_prompts(&mut self, n: usize, block: usize) -> Result<(Vec<Prompt>, Vec<usize>), TrainError> {
        let mut samples: Vec<Sample> = Vec::with_capacity(n);
        let mut usable: Vec<usize> = Vec::with_capacity(n);
        let mut prepared: HashMap<usize, Prompt> = HashMap::new();
        while usable.len() < n {
            let first = samples.len();
            let need = n - usable.len();
            for _ in 0..need {
                match self.loader.next() {
                    Some(s) => samples.push(s?),
                    None => {
                        return Err(TrainError::Config(
                            "the data ran out: set data.epochs larger (or leave it unset to cycle)".into(),
                        ))
                    }
                }
            }
            // Sample `first + i` takes position `usable.len() + i` unless one is skipped.
            let mine: Vec<usize> = (first..first + need)
                .filter(|&c| self.dp.owner(usable.len() + c - first, block) == self.dp.rank())
                .collect();
            let fits: Vec<(usize, bool)> = self
                .prepare_many(&mine.iter().map(|&c| &samples[c]).collect::<Vec<_>>())?
                .into_iter()
                .zip(&mine)
                .map(|(p, &c)| {
                    let fits = p.ids.len() <= self.config.prompt.max_prompt_tokens;
                    prepared.insert(c, p);
                    (c, fits)
                })
                .collect();
            let fits: HashMap<usize, bool> = self.dp.gather(&fits)?.into_iter().flatten().collect();
            for c in first..first + need {
                if fits.get(&c).copied().unwrap_or(false) {
                    usable.push(c);
                } else {
                    self.prompts_skipped += 1;
                }
            }
        }
        let positions = self.dp.my_positions(n, block);
        // A skip shifts later samples to other positions: prepare what this rank now lacks.
        let lacking: Vec<&Sample> =
            positions.iter().map(|&p| usable[p]).filter(|c| !prepared.contains_key(c)).map(|c| &samples[c]).collect();
        let mut extra = self.prepare_many(&lacking)?.into_iter();
        let prompts = positions
            .iter()
            .map(|&p| prepared.remove(&usable[p]).or_else(|| extra.next()).expect("one prepared prompt per position"))
            .collect();
        Ok((prompts, positions))
    }

    fn prepare_many(&self, samples: &[&Sample]) -> Result<Vec<Prompt>, TrainError> {
        let suffix = &self.config.prompt.suffix;
        let key = self.config.prompt.domain_key;
        let (processor, tokenizer, format) = (&self.processor, &self.tokenizer, self.policy.prompt_format());
        samples.par_iter().map(|s| prepare(s, processor, tokenizer, suffix, key, format)).collect()
    }

    /// Per-token log-probs (and entropies) of `responses` under `model`, micro-batched.
    fn score_rows(
        &self,
        model: &dyn Policy,
        prompts: &[Prompt],
        rows: &[(usize, &[i64])],
        temperature: f64,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.config.rl.micro_batch.max(1)) {
            let batch = PromptBatch::new(
                &chunk.iter().map(|(p, _)| &prompts[*p]).collect::<Vec<_>>(),
                self.tokens.pad,
                self.device,
            )?;
            let responses: Vec<Vec<i64>> = chunk.iter().map(|(_, r)| r.to_vec()).collect();
            let (logp, _) = model.score(&batch.inputs(), &responses, temperature)?;
            let logp = logp.to_kind(Kind::Float).to_device(Device::Cpu);
            for (i, r) in responses.iter().enumerate() {
                out.push(Vec::<f32>::try_from(logp.get(i as i64).narrow(0, 0, r.len() as i64))?);
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ SFT

    fn sft_step(&mut self) -> Result<Metrics, TrainError> {
        let t0 = Instant::now();
        let batch_size = self.config.sft.batch_size;
        let (prompts, _) = self.next_prompts(batch_size, batch_size)?;
        let targets: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| {
                let mut ids: Vec<i64> = self.tokenizer.encode(&p.reference)?.into_iter().map(i64::from).collect();
                ids.push(i64::from(self.tokenizer.im_end_id()));
                Ok(ids)
            })
            .collect::<Result<_, qoq_policy::PolicyError>>()?;
        // Token mean over the global batch.
        let normaliser = self.dp.sum(&[targets.iter().map(Vec::len).sum::<usize>() as f64])?[0].max(1.0);
        self.optimizer.zero_grad();
        let mut loss_sum = 0.0;
        let mut correct = 0.0;
        for chunk in (0..prompts.len()).collect::<Vec<_>>().chunks(self.config.sft.micro_batch) {
            let batch = PromptBatch::new(
                &chunk.iter().map(|&i| &prompts[i]).collect::<Vec<_>>(),
                self.tokens.pad,
                self.device,
            )?;
            let responses: Vec<Vec<i64>> = chunk.iter().map(|&i| targets[i].clone()).collect();
            let (logp, _) = self.policy.score(&batch.inputs(), &responses, 1.0)?;
            let mask = response_mask(&responses.iter().map(Vec::len).collect::<Vec<_>>(), self.device);
            let loss = sft_loss(&logp, &mask, normaliser);
            loss.backward();
            loss_sum += loss.double_value(&[]);
            // exp(logp) > 0.5 means the reference token is the arg-max.
            correct +=
                tch::no_grad(|| (logp.exp().gt(0.5).to_kind(Kind::Float) * &mask).sum(Kind::Float).double_value(&[]));
        }
        let lr = self.optimizer.config().lr_at(self.optimizer.steps(), self.config.sft.steps);
        let grad_norm = self.optimizer.step(lr, &self.dp)?;
        self.state.sft_steps_done += 1;
        let [loss_sum, correct]: [f64; 2] = self.dp.sum(&[loss_sum, correct])?.try_into().expect("two sums");
        let mut m = Metrics::new();
        m.insert("sft/loss".into(), loss_sum);
        m.insert("sft/token_accuracy".into(), correct / normaliser);
        m.insert("actor/grad_norm".into(), grad_norm);
        m.insert("actor/lr".into(), lr);
        m.insert("timing_s/step".into(), t0.elapsed().as_secs_f64());
        m.insert("perf/throughput".into(), normaliser / t0.elapsed().as_secs_f64());
        if let Some(rss) = crate::memory::peak_rss_mib() {
            m.insert("perf/max_memory_rss_mib".into(), rss);
        }
        m.insert("perf/optimizer_state_mib".into(), self.optimizer.state_bytes() as f64 / (1 << 20) as f64);
        Ok(m)
    }

    // ------------------------------------------------------------------ RL

    fn sampling(&self, temperature: f64, max_new_tokens: usize, g: usize, seed: u64) -> SamplingConfig {
        let rl = &self.config.rl;
        SamplingConfig {
            temperature,
            top_k: (rl.top_k > 0 && temperature > 0.0).then_some(rl.top_k),
            top_p: (rl.top_p < 1.0 && temperature > 0.0).then_some(rl.top_p),
            max_new_tokens,
            stop_tokens: self.tokens.stop.clone(),
            banned_tokens: self.tokens.banned.clone(),
            samples_per_prompt: g,
            seed,
        }
    }

    /// Samples `g` responses per prompt, `batch` prompts per call. `positions`: the
    /// prompts' places in the global batch; a call's sampling stream is keyed by its
    /// place, so ranks whose shares align with `batch` draw what one process would.
    fn rollout(
        &self,
        prompts: &[Prompt],
        positions: &[usize],
        sampling: &SamplingConfig,
        batch: usize,
        step: u64,
    ) -> Result<Vec<Response>, TrainError> {
        let mut out = Vec::new();
        let batch = batch.max(1);
        for start in (0..prompts.len()).step_by(batch) {
            let end = (start + batch).min(prompts.len());
            let chunk: Vec<&Prompt> = prompts[start..end].iter().collect();
            let inputs = PromptBatch::new(&chunk, self.tokens.pad, self.device)?;
            let first = positions[start];
            let aligned = first.is_multiple_of(batch) && positions[start..end].windows(2).all(|w| w[1] == w[0] + 1);
            let stream = if aligned { (first / batch) as u64 } else { (1 << 40) + first as u64 };
            let config = SamplingConfig { seed: derive_seed(self.state.seed, step, stream), ..sampling.clone() };
            let rollouts = self.policy.generate(&inputs.inputs(), &config)?;
            let texts = rollouts.texts(&self.tokenizer, &self.tokens.stop)?;
            for (i, text) in texts.into_iter().enumerate() {
                out.push(Response {
                    prompt: start + rollouts.prompt_index[i],
                    tokens: rollouts.tokens[i].clone(),
                    text,
                    stopped: rollouts.stopped[i],
                    scores: Scores::default(),
                    old_logp: Vec::new(),
                    ref_logp: None,
                    advantage: 0.0,
                });
            }
        }
        Ok(out)
    }

    fn score_rewards(&self, prompts: &[Prompt], responses: &mut [Response]) {
        let items: Vec<(&str, Target<'_>)> = responses
            .iter()
            .map(|r| {
                let p = &prompts[r.prompt];
                (r.text.as_str(), Target { answer: &p.answer, boxes: &p.boxes, mask: p.mask.as_ref() })
            })
            .collect();
        let scores = self.scorer.score_batch(&items);
        for (r, s) in responses.iter_mut().zip(scores) {
            r.scores = s;
        }
    }

    fn rl_step(&mut self) -> Result<Metrics, TrainError> {
        let rl = self.config.rl.clone();
        let step = self.state.step() + 1;
        let g = rl.samples_per_prompt;
        let mut timing = BTreeMap::new();
        let t_step = Instant::now();

        // 1. gen: this rank's share of the global batch of prompts_per_step prompts.
        let t = Instant::now();
        let (prompts, positions) = self.next_prompts(rl.prompts_per_step, rl.prompts_per_update)?;
        let sampling = self.sampling(rl.temperature, rl.max_new_tokens, g, 0);
        let mut responses = self.rollout(&prompts, &positions, &sampling, rl.generation_batch, step)?;
        timing.insert("gen", t.elapsed().as_secs_f64());

        // 2. reward
        let t = Instant::now();
        self.score_rewards(&prompts, &mut responses);
        timing.insert("reward", t.elapsed().as_secs_f64());

        // 3. old_log_prob (and ref): the same forward as the update, so ratio = 1 at first.
        let t = Instant::now();
        let rows: Vec<(usize, &[i64])> = responses.iter().map(|r| (r.prompt, r.tokens.as_slice())).collect();
        let old = self.score_rows(self.policy.as_ref(), &prompts, &rows, rl.temperature)?;
        timing.insert("old_log_prob", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let refs = match &self.reference {
            Some(r) => Some(self.score_rows(r.as_ref(), &prompts, &rows, rl.temperature)?),
            None => None,
        };
        timing.insert("ref", t.elapsed().as_secs_f64());
        for (i, (r, old)) in responses.iter_mut().zip(old).enumerate() {
            r.old_logp = old;
            r.ref_logp = refs.as_ref().map(|v| v[i].clone());
        }

        // 4. adv over the GLOBAL batch: every rank's rewards, groups and lengths, in batch
        // order (position, then sample), so all ranks compute what one process would.
        let t = Instant::now();
        // Texts travel only when rank 0 writes this step's rollouts.
        let due = rl_due(self.config.run.rollouts_every, self.state.rl_steps_done + 1);
        let mine: Vec<RolloutRecord> = responses
            .iter()
            .map(|r| {
                let p = &prompts[r.prompt];
                RolloutRecord {
                    position: positions[r.prompt],
                    sample_id: p.sample_id.clone(),
                    group: p.group.clone(),
                    prompt_tokens: p.ids.len(),
                    tokens: r.tokens.len(),
                    text: if due { r.text.clone() } else { String::new() },
                    stopped: r.stopped,
                    scores: r.scores,
                    kl: r.ref_logp.as_deref().map(|rl| k3_sum(&r.old_logp, rl)),
                    advantage: 0.0,
                }
            })
            .collect();
        let mut all: Vec<RolloutRecord> = self.dp.gather(&mine)?.into_iter().flatten().collect();
        // Stable: each group keeps its sampling order.
        all.sort_by_key(|r| r.position);
        if all.len() != rl.prompts_per_step * g {
            return Err(TrainError::Config(format!(
                "gathered {} responses, expected {} (ranks disagree on the batch)",
                all.len(),
                rl.prompts_per_step * g
            )));
        }
        let groups: Vec<Group> = all
            .chunks(g)
            .map(|rs| Group { domain: rs[0].group.clone(), rewards: rs.iter().map(|r| r.scores.overall).collect() })
            .collect();
        let kl: Option<Vec<Vec<f64>>> =
            refs.as_ref().map(|_| all.chunks(g).map(|rs| rs.iter().map(|r| r.kl.unwrap_or(0.0)).collect()).collect());
        let adv = self.state.drpo.advantages(&self.config.algorithm.advantages, &groups, kl.as_deref());
        for (rs, a) in all.chunks_mut(g).zip(&adv.advantages) {
            for (r, a) in rs.iter_mut().zip(a) {
                r.advantage = *a;
            }
        }
        // Responses of one prompt are consecutive, G of them.
        for (i, r) in responses.iter_mut().enumerate() {
            r.advantage = all[positions[r.prompt] * g + i % g].advantage;
        }
        timing.insert("adv", t.elapsed().as_secs_f64());

        // 5. update_actor: one epoch, prompts_per_update prompts per optimizer step, each
        // split over the ranks; losses normalised by the whole update batch.
        let t = Instant::now();
        let loss_config = self.config.algorithm.loss.clone();
        let updates_per_step = rl.prompts_per_step / rl.prompts_per_update;
        let total_updates = self.config.rl.steps * updates_per_step as u64;
        let local_per_update = rl.prompts_per_update / self.dp.world() * g;
        let mut sums = LossSums::default();
        let mut updates = 0.0;
        for (u, batch) in responses.chunks(local_per_update).enumerate() {
            let span = u * rl.prompts_per_update * g..(u + 1) * rl.prompts_per_update * g;
            let lengths: Vec<usize> = all[span].iter().map(|r| r.tokens).collect();
            let normaliser = batch_normaliser(loss_config.aggregation, &lengths);
            self.optimizer.zero_grad();
            for micro in batch.chunks(rl.micro_batch) {
                let terms =
                    self.micro_batch_loss(&prompts, micro, &loss_config, normaliser, rl.temperature, &mut sums)?;
                terms.loss.backward();
                sums.add(&terms);
            }
            let lr = self.optimizer.config().lr_at(self.optimizer.steps(), total_updates);
            sums.grad_norm += self.optimizer.step(lr, &self.dp)?;
            sums.lr = lr;
            updates += 1.0;
        }
        sums.sum_over_ranks(&self.dp)?;
        timing.insert("update_actor", t.elapsed().as_secs_f64());
        self.state.rl_steps_done += 1;
        timing.insert("step", t_step.elapsed().as_secs_f64());

        // Logs (global figures).
        let mut m = Metrics::new();
        rollout_metrics(&mut m, &all, &rl);
        sums.report(&mut m, updates);
        for (name, s) in &adv.domains {
            m.insert(format!("drpo/{name}/reward_mean"), s.reward_mean);
            m.insert(format!("drpo/{name}/questions"), s.questions as f64);
            m.insert(format!("drpo/{name}/temperature"), s.temperature);
            m.insert(format!("drpo/{name}/clusters"), s.clusters as f64);
            m.insert(format!("drpo/{name}/scale_mean"), s.scale_mean);
        }
        m.insert("frac_reward_zero_std".into(), adv.zero_std_groups as f64 / groups.len().max(1) as f64);
        m.insert("prompt_length/skipped".into(), self.prompts_skipped as f64);
        for (k, v) in &timing {
            m.insert(format!("timing_s/{k}"), *v);
        }
        let tokens: usize = all.iter().map(|r| r.tokens + r.prompt_tokens).sum();
        m.insert("perf/throughput".into(), tokens as f64 / timing["step"]);
        m.insert("perf/time_per_step".into(), timing["step"]);
        if let Some(rss) = crate::memory::peak_rss_mib() {
            m.insert("perf/max_memory_rss_mib".into(), rss);
        }
        m.insert("perf/optimizer_state_mib".into(), self.optimizer.state_bytes() as f64 / (1 << 20) as f64);
        if due && self.dp.is_main() {
            self.write_rollouts(step, &all)?;
        }
        if self.dp.is_main()
            && (rl_due(self.config.run.image_summary_every, self.state.rl_steps_done)
                || (self.config.run.image_summary_every > 0 && self.state.rl_steps_done == 1))
        {
            if let (Some(r), Some(events)) = (responses.first(), self.events.as_mut()) {
                if let Some(img) = rollout_image(&prompts[r.prompt], &r.text) {
                    events.image("rollout/boxes", step as i64, &img).map_err(|e| TrainError::io(events.path(), e))?;
                }
            }
        }
        Ok(m)
    }

    /// The loss share of one micro-batch (with autograd).
    fn micro_batch_loss(
        &self,
        prompts: &[Prompt],
        micro: &[Response],
        config: &crate::loss::LossConfig,
        normaliser: f64,
        temperature: f64,
        sums: &mut LossSums,
    ) -> Result<LossTerms, TrainError> {
        let batch = PromptBatch::new(
            &micro.iter().map(|r| &prompts[r.prompt]).collect::<Vec<_>>(),
            self.tokens.pad,
            self.device,
        )?;
        let tokens: Vec<Vec<i64>> = micro.iter().map(|r| r.tokens.clone()).collect();
        let (logp, entropy) = self.policy.score(&batch.inputs(), &tokens, temperature)?;
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let mask = response_mask(&lengths, self.device);
        let pad = |rows: Vec<&[f32]>| -> Tensor {
            let t = lengths.iter().copied().max().unwrap_or(0);
            let mut v = vec![0f32; rows.len() * t];
            for (i, r) in rows.iter().enumerate() {
                v[i * t..i * t + r.len()].copy_from_slice(r);
            }
            Tensor::from_slice(&v).view([rows.len() as i64, t as i64]).to_device(self.device)
        };
        let old = pad(micro.iter().map(|r| r.old_logp.as_slice()).collect());
        let reference = micro
            .iter()
            .all(|r| r.ref_logp.is_some())
            .then(|| pad(micro.iter().map(|r| r.ref_logp.as_deref().unwrap_or(&[])).collect()));
        let adv: Vec<f32> = micro.iter().map(|r| r.advantage as f32).collect();
        let adv = Tensor::from_slice(&adv).to_device(self.device);
        let logp = logp.to_kind(Kind::Float);
        sums.entropy += tch::no_grad(|| (entropy.to_kind(Kind::Float) * &mask).sum(Kind::Float).double_value(&[]));
        sums.tokens += lengths.iter().sum::<usize>() as f64;
        Ok(policy_loss(&logp, &old, reference.as_ref(), &adv, &mask, config, normaliser))
    }

    fn write_rollouts(&self, step: u64, all: &[RolloutRecord]) -> Result<(), TrainError> {
        let dir = self.out.join("rollouts");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let path = dir.join(format!("step_{step}.jsonl"));
        let tmp = dir.join(format!(".step_{step}.jsonl.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?);
        for r in all {
            let mut line = serde_json::json!({
                "step": step,
                "prompt_id": r.sample_id,
                "domain": r.group,
                "response": r.text,
                "reward": r.scores.overall,
                "advantage": r.advantage,
            });
            for (name, v) in r.scores.components() {
                line[name] = serde_json::json!(v);
            }
            writeln!(w, "{line}").map_err(|e| TrainError::io(&tmp, e))?;
        }
        w.flush().map_err(|e| TrainError::io(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))
    }

    // ------------------------------------------------------------------ validation

    /// Generates for the held-out split (n = 1) and reports rewards and the paper's
    /// accuracy / F1 per domain and dataset.
    pub fn validate(&mut self) -> Result<Metrics, TrainError> {
        let started = Instant::now();
        let v = self.config.validation.clone();
        let (shards, mut loader_config) = self.config.loader().map_err(TrainError::Config)?;
        loader_config = LoaderConfig {
            splits: Some(v.splits.clone()),
            epochs: Some(1),
            shuffle: false,
            domain_weights: None,
            ..loader_config
        };
        let mut loader = Loader::open(v.shards.as_deref().unwrap_or(&shards), loader_config)?;
        let mut samples = Vec::new();
        for s in loader.by_ref().take(v.max_samples) {
            samples.push(s?);
        }
        // Each rank answers a contiguous share; all figures are over every rank's answers.
        let share = self.dp.my_range(samples.len());
        let prompts = self.prepare_many(&samples[share.clone()].iter().collect::<Vec<_>>())?;
        let positions: Vec<usize> = share.collect();
        let sampling = self.sampling(v.temperature, v.max_new_tokens.unwrap_or(self.config.rl.max_new_tokens), 1, 0);
        let mut responses =
            self.rollout(&prompts, &positions, &sampling, v.batch_size, u64::MAX - self.state.step())?;
        self.score_rewards(&prompts, &mut responses);
        let mine: Vec<(String, String, String, String, Scores)> = responses
            .iter()
            .map(|r| {
                let p = &prompts[r.prompt];
                (p.domain.clone(), p.dataset.clone(), r.text.clone(), p.answer.clone(), r.scores)
            })
            .collect();
        let answers: Vec<_> = self.dp.gather(&mine)?.into_iter().flatten().collect();
        let mut evaluator = Evaluator::new(self.scorer.labels);
        let mut m = Metrics::new();
        for (domain, dataset, text, answer, _) in &answers {
            evaluator.add(domain, dataset, text, answer);
        }
        let n = answers.len().max(1) as f64;
        m.insert("val/reward/overall".into(), answers.iter().map(|a| a.4.overall).sum::<f64>() / n);
        for (i, (name, _)) in Scores::default().components().iter().enumerate() {
            let mean = answers.iter().map(|a| a.4.components()[i].1).sum::<f64>() / n;
            m.insert(format!("val/reward/{name}"), mean);
        }
        m.extend(evaluator.report().flat());
        m.insert("timing_s/validation".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}

/// Running sums of the loss figures over a step's optimizer updates.
#[derive(Default)]
struct LossSums {
    pg_loss: f64,
    kl_loss: f64,
    clip_higher: f64,
    clip_lower: f64,
    ppo_kl: f64,
    entropy: f64,
    tokens: f64,
    grad_norm: f64,
    lr: f64,
}

impl LossSums {
    fn add(&mut self, t: &LossTerms) {
        self.pg_loss += t.pg_loss;
        self.kl_loss += t.kl_loss;
        self.clip_higher += t.pg_clipfrac_higher;
        self.clip_lower += t.pg_clipfrac_lower;
        self.ppo_kl += t.ppo_kl;
    }

    /// Adds up the ranks' shares (the gradient norm and learning rate are global already).
    fn sum_over_ranks(&mut self, dp: &DataParallel) -> Result<(), TrainError> {
        let v = dp.sum(&[
            self.pg_loss,
            self.kl_loss,
            self.clip_higher,
            self.clip_lower,
            self.ppo_kl,
            self.entropy,
            self.tokens,
        ])?;
        [self.pg_loss, self.kl_loss, self.clip_higher, self.clip_lower, self.ppo_kl, self.entropy, self.tokens] =
            v.try_into().expect("seven sums");
        Ok(())
    }

    /// Per-update means (each update's shares already sum to that update's value).
    fn report(&self, m: &mut Metrics, updates: f64) {
        let u = updates.max(1.0);
        m.insert("actor/pg_loss".into(), self.pg_loss / u);
        m.insert("actor/kl_loss".into(), self.kl_loss / u);
        m.insert("actor/pg_clipfrac".into(), self.clip_higher / u);
        m.insert("actor/pg_clipfrac_lower".into(), self.clip_lower / u);
        m.insert("actor/ppo_kl".into(), self.ppo_kl / u);
        m.insert("actor/entropy".into(), self.entropy / self.tokens.max(1.0));
        m.insert("actor/grad_norm".into(), self.grad_norm / u);
        m.insert("actor/lr".into(), self.lr);
    }
}

fn stats(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v.iter().copied().fold(f64::MIN, f64::max), v.iter().copied().fold(f64::MAX, f64::min))
}

fn rollout_metrics(m: &mut Metrics, all: &[RolloutRecord], rl: &crate::config::RlSection) {
    let (mean, max, min) = stats(all.iter().map(|r| r.scores.overall));
    m.insert("reward/overall".into(), mean);
    m.insert("critic/score/mean".into(), mean);
    m.insert("critic/score/max".into(), max);
    m.insert("critic/score/min".into(), min);
    for (i, (name, _)) in Scores::default().components().iter().enumerate() {
        let (mean, _, _) = stats(all.iter().map(|r| r.scores.components()[i].1));
        m.insert(format!("reward/{name}"), mean);
    }
    let (mean, max, min) = stats(all.iter().map(|r| r.advantage));
    m.insert("critic/advantages/mean".into(), mean);
    m.insert("critic/advantages/max".into(), max);
    m.insert("critic/advantages/min".into(), min);
    let (mean, max, min) = stats(all.iter().map(|r| r.tokens as f64));
    m.insert("response_length/mean".into(), mean);
    m.insert("response_length/max".into(), max);
    m.insert("response_length/min".into(), min);
    let clipped = all.iter().filter(|r| !r.stopped && r.tokens >= rl.max_new_tokens).count();
    m.insert("response_length/clip_ratio".into(), clipped as f64 / all.len().max(1) as f64);
    let (mean, max, min) = stats(all.chunks(rl.samples_per_prompt.max(1)).map(|rs| rs[0].prompt_tokens as f64));
    m.insert("prompt_length/mean".into(), mean);
    m.insert("prompt_length/max".into(), max);
    m.insert("prompt_length/min".into(), min);
}

/// Whether a periodic action (every `every` RL steps; 0: never) falls on RL step `n`.
fn rl_due(every: u64, n: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

/// What every rank learns about each response of the global batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RolloutRecord {
    /// The prompt's place in the global batch.
    position: usize,
    sample_id: String,
    group: String,
    prompt_tokens: usize,
    tokens: usize,
    /// Only on steps whose rollouts are written.
    text: String,
    stopped: bool,
    scores: Scores,
    /// Sum of the k3 KL estimate (when there is a reference model).
    kl: Option<f64>,
    advantage: f64,
}

/// The module groups a config names (validated when the config was read).
fn module_groups(names: &[String]) -> Result<Vec<ModuleGroup>, TrainError> {
    names
        .iter()
        .map(|n| {
            ModuleGroup::ALL
                .into_iter()
                .find(|g| g.name() == n)
                .ok_or_else(|| TrainError::Config(format!("model.freeze: unknown module {n:?}")))
        })
        .collect()
}
