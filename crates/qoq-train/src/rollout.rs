//! Generation and scoring: what an RL step knows about each response, one type per
//! phase, each made from the one before and what that phase adds (no placeholders):
//!
//! - gen: [`Sampled`] (tokens, text, whether it stopped)
//! - reward: [`Scored`] (a [`Sampled`] and its [`Scores`])
//! - old_log_prob / ref: [`LogProbs`] of each [`Scored`] response
//! - adv: the ranks exchange a [`RolloutRecord`] per response; over the global batch
//!   each becomes [`Advantaged`] (the logs and the rollouts files), and each of this
//!   rank's responses becomes [`Ready`] for update_actor.
//!
//! Validation samples and scores with the same functions.

use std::io::Write;

use qoq_policy::{
    slot_bytes, EngineConfig, EngineStats, Inputs, Policy, PolicyError, PromptSource, RolloutEngine, SamplingConfig,
};
use qoq_rewards::{Scores, Target};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::advantage::ResponseTelemetry;
use crate::loss::k3_sum;
use crate::micro_batches::Packing;
use crate::prompts::{Prompt, PromptBatch};
use crate::{TrainError, Trainer};

/// After gen: one sampled response.
#[derive(Debug, Clone)]
pub(crate) struct Sampled {
    /// Index of its prompt in the step's prompt list.
    pub prompt: usize,
    pub tokens: Vec<i64>,
    pub text: String,
    /// It ended on a stop token (rather than at max_new_tokens).
    pub stopped: bool,
}

/// After reward: a sampled response and its reward.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub response: Sampled,
    pub scores: Scores,
}

/// After old_log_prob / ref: a response's per-token log-probs under the rollout policy
/// and, when there is a reference model, under it.
#[derive(Debug, Clone)]
pub(crate) struct LogProbs {
    pub old: Vec<f32>,
    pub reference: Option<Vec<f32>>,
}

impl LogProbs {
    /// Sum of the k3 KL estimate (when there is a reference model).
    pub fn kl(&self) -> Option<f64> {
        self.reference.as_deref().map(|r| k3_sum(&self.old, r))
    }
}

/// What every rank learns about each response of the global batch (adv gathers
/// them): a [`Scored`] response and its [`LogProbs`], told by its prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RolloutRecord {
    /// The prompt's place in the global batch.
    pub position: usize,
    pub sample_id: String,
    pub group: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    /// Only on steps whose rollouts are written.
    pub text: String,
    pub stopped: bool,
    pub scores: Scores,
    /// Sum of the k3 KL estimate (when there is a reference model).
    pub kl: Option<f64>,
}

impl RolloutRecord {
    /// The record of `r`, a response to `prompt` (at `position` in the global batch);
    /// its text only `with_text`.
    pub fn new(prompt: &Prompt, position: usize, r: &Scored, logp: &LogProbs, with_text: bool) -> Self {
        Self {
            position,
            sample_id: prompt.sample_id.clone(),
            group: prompt.group.clone(),
            prompt_tokens: prompt.ids.len(),
            tokens: r.response.tokens.len(),
            text: if with_text { r.response.text.clone() } else { String::new() },
            stopped: r.response.stopped,
            scores: r.scores,
            kl: logp.kl(),
        }
    }
}

/// After adv: a record of the global batch, its advantage and how the advantage was
/// formed (what the logs and the rollouts files show).
#[derive(Debug, Clone)]
pub(crate) struct Advantaged {
    pub record: RolloutRecord,
    pub advantage: f64,
    pub telemetry: ResponseTelemetry,
}

/// After adv: one of this rank's responses with everything update_actor needs.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub response: Sampled,
    pub logp: LogProbs,
    pub advantage: f64,
}

/// A step's seed for the response streams (run seed, step): a step's draws do not depend
/// on earlier ones. Within it each response's stream is keyed by its prompt's place in the
/// global batch and its sample index ([`qoq_policy::response_stream`]).
fn derive_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// This rank's prompts as the engine reads them: keyed by their global places.
struct RankPrompts<'a> {
    prompts: &'a [Prompt],
    positions: &'a [usize],
    pad: i64,
    device: Device,
}

impl PromptSource for RankPrompts<'_> {
    fn len(&self) -> usize {
        self.prompts.len()
    }
    fn prompt_tokens(&self, i: usize) -> usize {
        self.prompts[i].ids.len()
    }
    fn key(&self, i: usize) -> u64 {
        self.positions[i] as u64
    }
    fn with_batch(
        &self,
        indices: &[usize],
        f: &mut dyn FnMut(&Inputs<'_>) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError> {
        let picked: Vec<&Prompt> = indices.iter().map(|&i| &self.prompts[i]).collect();
        let batch = PromptBatch::new(&picked, self.pad, self.device).map_err(|e| PolicyError::Input(e.to_string()))?;
        f(&batch.inputs())
    }
}

/// How the engine is sized for one phase: prompts per prefill, and the slots (explicit,
/// and / or capped by a KV budget in bytes).
pub(crate) struct EngineSizing {
    pub prefill_prompts: usize,
    pub slots: Option<usize>,
    pub budget_bytes: Option<u64>,
}

impl Trainer {
    pub(crate) fn sampling(&self, temperature: f64, max_new_tokens: usize, g: usize, seed: u64) -> SamplingConfig {
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

    /// The RL step's engine: `rl.generation_batch` prompts per prefill, `rl.rollout_slots`
    /// (default generation_batch x G) capped by `rl.kv_cache_gb`.
    pub(crate) fn rl_engine_sizing(&self) -> EngineSizing {
        let rl = &self.config.rl;
        EngineSizing {
            prefill_prompts: rl.generation_batch,
            slots: Some(rl.rollout_slots.unwrap_or(rl.generation_batch * rl.samples_per_prompt)),
            budget_bytes: rl.kv_cache_gb.map(|gb| (gb * (1u64 << 30) as f64) as u64),
        }
    }

    /// gen: `g` responses per prompt from the rollout engine. `positions`: the prompts'
    /// places in the global batch, which key the draws, so any rank count, slot count or
    /// prefill grouping samples what one process would.
    pub(crate) fn rollout(
        &self,
        prompts: &[Prompt],
        positions: &[usize],
        sampling: &SamplingConfig,
        sizing: &EngineSizing,
        step: u64,
    ) -> Result<(Vec<Sampled>, EngineStats), TrainError> {
        let _whole = self.whole_policy()?;
        let policy = self.policy.as_ref();
        let source = RankPrompts { prompts, positions, pad: self.tokens.pad, device: self.device };
        let capacity = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0) + sampling.max_new_tokens;
        let g = sampling.samples_per_prompt.max(1);
        let slots = EngineConfig::slots_for(policy, sizing.slots, sizing.budget_bytes, capacity as i64).unwrap_or(g);
        if slots < g {
            let per_slot = slot_bytes(policy, capacity as i64) as f64 / (1u64 << 30) as f64;
            return Err(TrainError::Config(format!(
                "rl.kv_cache_gb holds {slots} rollout slots of {capacity} tokens ({per_slot:.3} GiB each) but a prompt's \
                 {g} samples need {g}: raise rl.kv_cache_gb to at least {:.3} or lower rl.max_new_tokens",
                per_slot * g as f64
            )));
        }
        let config = SamplingConfig { seed: derive_seed(self.state.seed, step), ..sampling.clone() };
        let engine = RolloutEngine::new(policy, EngineConfig { slots, prefill_prompts: sizing.prefill_prompts });
        let (rollouts, stats) = engine.run(&source, &config)?;
        let texts = rollouts.texts(&self.tokenizer, &self.tokens.stop)?;
        let sampled = texts
            .into_iter()
            .zip(rollouts.tokens)
            .zip(rollouts.prompt_index.into_iter().zip(rollouts.stopped))
            .map(|((text, tokens), (prompt, stopped))| Sampled { prompt, tokens, text, stopped })
            .collect();
        Ok((sampled, stats))
    }

    /// reward: scores every response against its prompt's answer, boxes and mask.
    pub(crate) fn score_rewards(&self, prompts: &[Prompt], responses: Vec<Sampled>) -> Vec<Scored> {
        let items: Vec<(&str, Target<'_>)> = responses
            .iter()
            .map(|r| {
                let p = &prompts[r.prompt];
                (r.text.as_str(), Target { answer: &p.answer, boxes: &p.boxes, mask: p.mask.as_ref() })
            })
            .collect();
        let scores = self.scorer.score_batch(&items);
        responses.into_iter().zip(scores).map(|(response, scores)| Scored { response, scores }).collect()
    }

    /// Per-token log-probs of `rows` (prompt index, response tokens) under `model`,
    /// micro-batched (old_log_prob / ref).
    /// Log-probs of `rows` (prompt index, response) under `model`, without a graph, in
    /// the micro-batches of `packings` (one per optimizer batch of `per_update` rows: the
    /// update's own, so its first ratio is exactly 1).
    pub(crate) fn score_rows(
        &self,
        model: &dyn Policy,
        prompts: &[Prompt],
        rows: &[(usize, &[i64])],
        packings: &[Packing],
        per_update: usize,
        temperature: f64,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let _guard = tch::no_grad_guard();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; rows.len()];
        for (u, packing) in packings.iter().enumerate() {
            for micro in &packing.batches {
                let picked: Vec<usize> = micro.iter().map(|&i| u * per_update + i).collect();
                let batch = PromptBatch::new(
                    &picked.iter().map(|&i| &prompts[rows[i].0]).collect::<Vec<_>>(),
                    self.tokens.pad,
                    self.device,
                )?;
                let responses: Vec<Vec<i64>> = picked.iter().map(|&i| rows[i].1.to_vec()).collect();
                let chunk = self.config.memory.logits_chunk_tokens;
                let (logp, _) = model.score(&batch.inputs(), &responses, temperature, chunk)?;
                let logp = logp.to_kind(Kind::Float).to_device(Device::Cpu);
                for (j, (&i, r)) in picked.iter().zip(&responses).enumerate() {
                    out[i] = Some(Vec::<f32>::try_from(logp.get(j as i64).narrow(0, 0, r.len() as i64))?);
                }
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, o)| o.ok_or_else(|| TrainError::Config(format!("response {i} fell in no micro-batch"))))
            .collect()
    }

    /// `rollouts/step_N.jsonl`: one line per response of the global batch (rank 0), with
    /// the DRPO telemetry its advantage follows from (docs/drpo.md, "Telemetry").
    pub(crate) fn write_rollouts(&self, step: u64, all: &[Advantaged]) -> Result<(), TrainError> {
        let dir = self.out.join("rollouts");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let path = dir.join(format!("step_{step}.jsonl"));
        let tmp = dir.join(format!(".step_{step}.jsonl.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?);
        for Advantaged { record: r, advantage, telemetry } in all {
            let mut line = serde_json::json!({
                "step": step,
                "prompt_id": r.sample_id,
                "domain": r.group,
                "response": r.text,
                "reward": r.scores.overall,
                "advantage": advantage,
            });
            for (name, v) in r.scores.components() {
                line[name] = serde_json::json!(v);
            }
            if let serde_json::Value::Object(t) = serde_json::json!(telemetry) {
                line.as_object_mut().expect("an object").extend(t);
            }
            writeln!(w, "{line}").map_err(|e| TrainError::io(&tmp, e))?;
        }
        w.flush().map_err(|e| TrainError::io(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))
    }
}
