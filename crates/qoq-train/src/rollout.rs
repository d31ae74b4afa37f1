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

use qoq_policy::{Policy, SamplingConfig};
use qoq_rewards::{Scores, Target};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

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

/// After adv: a record of the global batch and its advantage (what the logs and the
/// rollouts files show).
#[derive(Debug, Clone)]
pub(crate) struct Advantaged {
    pub record: RolloutRecord,
    pub advantage: f64,
}

/// After adv: one of this rank's responses with everything update_actor needs.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub response: Sampled,
    pub logp: LogProbs,
    pub advantage: f64,
}

/// Stream seeds per (run seed, step, chunk): a step's draws do not depend on earlier ones.
fn derive_seed(seed: u64, step: u64, chunk: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ chunk.wrapping_mul(0x1656_67B1_9E37_79F9)
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

    /// gen: samples `g` responses per prompt, `batch` prompts per call. `positions`:
    /// the prompts' places in the global batch; a call's sampling stream is keyed by its
    /// place, so ranks whose shares align with `batch` draw what one process would.
    pub(crate) fn rollout(
        &self,
        prompts: &[Prompt],
        positions: &[usize],
        sampling: &SamplingConfig,
        batch: usize,
        step: u64,
    ) -> Result<Vec<Sampled>, TrainError> {
        let _whole = self.whole_policy()?;
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
                out.push(Sampled {
                    prompt: start + rollouts.prompt_index[i],
                    tokens: rollouts.tokens[i].clone(),
                    text,
                    stopped: rollouts.stopped[i],
                });
            }
        }
        Ok(out)
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

    /// `rollouts/step_N.jsonl`: one line per response of the global batch (rank 0).
    pub(crate) fn write_rollouts(&self, step: u64, all: &[Advantaged]) -> Result<(), TrainError> {
        let dir = self.out.join("rollouts");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let path = dir.join(format!("step_{step}.jsonl"));
        let tmp = dir.join(format!(".step_{step}.jsonl.tmp"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?);
        for Advantaged { record: r, advantage } in all {
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
            writeln!(w, "{line}").map_err(|e| TrainError::io(&tmp, e))?;
        }
        w.flush().map_err(|e| TrainError::io(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))
    }
}
