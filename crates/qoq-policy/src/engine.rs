//! The rollout engine: continuous batching over a fixed set of KV slots.
//!
//! - The arena ([`SlotArena`]) is allocated once per run: `slots` sequences of up to the
//!   longest prompt plus `max_new_tokens` tokens. Memory is bounded by the slots whatever
//!   the number of prompts.
//! - A prompt is admitted when G slots are free: it is prefilled once (vision tower
//!   included), with other admitted prompts, up to `prefill_prompts` per forward; its keys
//!   are copied into its G samples' slots, which all draw their first token from its logits.
//! - Each step draws one token for every live slot ([`crate::sampler::draw`]), retires the
//!   responses that stopped (a stop token or `max_new_tokens`), moves live slots into the
//!   freed places so the live ones stay `0..n`, decodes the live slots only (each masked to
//!   its own length), and admits waiting prompts into the free slots.
//! - Sample `j` of the prompt keyed `k` draws from [`response_stream`]`(seed, k, j)`, one
//!   uniform per token, so its draws do not depend on the slots, on which prompts share its
//!   batch or on the rank.
//!
//! ```no_run
//! use qoq_policy::{load_policy, EngineConfig, Inputs, OnePrompt, RolloutEngine, SamplingConfig};
//! let policy = load_policy(std::path::Path::new("data/tiny-qwen3-vl"), tch::Device::Cpu)?;
//! let ids = tch::Tensor::from_slice(&[151644i64, 872, 198, 9707, 151645]).view([1, 5]);
//! let mut sampling = SamplingConfig::qwen_default(policy.special_tokens());
//! sampling.samples_per_prompt = 4;
//! let engine = RolloutEngine::new(policy.as_ref(), EngineConfig { slots: 4, prefill_prompts: 1 });
//! let prompt = OnePrompt { inputs: Inputs { input_ids: Some(&ids), ..Default::default() }, key: 0 };
//! let (rollouts, stats) = engine.run(&prompt, &sampling)?;
//! assert_eq!(rollouts.tokens.len(), 4);
//! # Ok::<(), qoq_policy::PolicyError>(())
//! ```

use qoq_data::rng::unit;
use rand_chacha::ChaCha8Rng;
use tch::nn::Module;
use tch::{Device, Kind, Tensor};

use crate::generate::{response_stream, Rollouts, SamplingConfig};
use crate::layers::kv_arena::SlotArena;
use crate::policy::{Inputs, Policy};
use crate::sampler::draw;
use crate::PolicyError;

/// The prompts a run answers. Prompt `i` is prefilled as part of a batch
/// ([`Self::with_batch`]); its samples' random streams are keyed by [`Self::key`].
pub trait PromptSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Tokens of prompt `i`.
    fn prompt_tokens(&self, i: usize) -> usize;
    /// Prompt `i`'s key: its place in the global rollout batch (what the draws depend on).
    fn key(&self, i: usize) -> u64;
    /// Calls `f` once with prompts `indices`, in that order, as one left-padded batch.
    fn with_batch(
        &self,
        indices: &[usize],
        f: &mut dyn FnMut(&Inputs<'_>) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError>;
}

/// A single prompt (one row of `inputs`) as a [`PromptSource`], keyed `key`.
pub struct OnePrompt<'a> {
    pub inputs: Inputs<'a>,
    pub key: u64,
}

impl PromptSource for OnePrompt<'_> {
    fn len(&self) -> usize {
        1
    }
    fn prompt_tokens(&self, _: usize) -> usize {
        self.inputs.input_ids.map_or(0, |t| t.size().last().copied().unwrap_or(0) as usize)
    }
    fn key(&self, _: usize) -> u64 {
        self.key
    }
    fn with_batch(
        &self,
        indices: &[usize],
        f: &mut dyn FnMut(&Inputs<'_>) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError> {
        if indices != [0] {
            return Err(PolicyError::Input(format!("a single prompt has no prompts {indices:?}")));
        }
        f(&self.inputs)
    }
}

/// How many sequences the engine keeps at once and how many prompts one prefill takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequence slots (at least G = `samples_per_prompt`).
    pub slots: usize,
    /// Prompts per prefill forward, at most.
    pub prefill_prompts: usize,
}

impl EngineConfig {
    /// Slots from an explicit count and/or a KV budget in bytes (the budget caps the
    /// count when both are given), for sequences of `capacity` tokens of `policy`.
    pub fn slots_for(
        policy: &(impl Policy + ?Sized),
        slots: Option<usize>,
        budget_bytes: Option<u64>,
        capacity: i64,
    ) -> Option<usize> {
        let per_slot = slot_bytes(policy, capacity);
        let by_budget = budget_bytes.map(|b| (b / per_slot.max(1)) as usize);
        match (slots, by_budget) {
            (Some(s), Some(b)) => Some(s.min(b)),
            (s, b) => s.or(b),
        }
    }
}

/// Bytes one slot of `capacity` tokens takes in `policy`'s compute dtype.
pub fn slot_bytes(policy: &(impl Policy + ?Sized), capacity: i64) -> u64 {
    let text = policy.text_model();
    let layout = text.layers.first().map_or((0, 0), |l| l.kv_layout());
    SlotArena::bytes_per_slot(text.layers.len(), layout.0, layout.1, capacity, text.embed_tokens.ws.kind())
}

/// What a run did (for the logs): decode steps, slot occupancy, prefills.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub decode_steps: usize,
    /// Live slots per decode step over the slot count, averaged over steps.
    pub occupancy: f64,
    pub prefills: usize,
    pub slots: usize,
    /// Bytes of the arena.
    pub arena_bytes: u64,
}

/// A live sequence: which response it is, its random stream and its next rope position.
struct Slot {
    response: usize,
    stream: ChaCha8Rng,
    position: i64,
}

/// Continuous batching over [`EngineConfig::slots`] KV slots (see the module doc).
pub struct RolloutEngine<'p, P: ?Sized> {
    policy: &'p P,
    config: EngineConfig,
}

impl<'p, P: Policy + ?Sized> RolloutEngine<'p, P> {
    pub fn new(policy: &'p P, config: EngineConfig) -> Self {
        Self { policy, config }
    }

    /// `samples_per_prompt` responses to every prompt of `source`, grouped by prompt (in
    /// `source` order), as [`crate::generate::generate`] returns them.
    pub fn run(
        &self,
        source: &dyn PromptSource,
        sampling: &SamplingConfig,
    ) -> Result<(Rollouts, EngineStats), PolicyError> {
        let _guard = tch::no_grad_guard();
        let g = sampling.samples_per_prompt.max(1);
        let n = source.len() * g;
        let mut out = Rollouts {
            prompt_index: (0..n).map(|i| i / g).collect(),
            tokens: vec![Vec::new(); n],
            logprobs: vec![Vec::new(); n],
            stopped: vec![false; n],
        };
        if n == 0 || sampling.max_new_tokens == 0 {
            return Ok((out, EngineStats::default()));
        }
        // Never more slots than responses.
        let slot_count = self.config.slots.min(n);
        if self.config.slots < g {
            return Err(PolicyError::Input(format!(
                "{} rollout slots cannot hold one prompt's {g} samples; give at least {g}",
                self.config.slots
            )));
        }
        let capacity = (0..source.len()).map(|i| source.prompt_tokens(i)).max().unwrap_or(0) + sampling.max_new_tokens;
        let text = self.policy.text_model();
        let layout = text.layers.first().map_or((0, 0), |l| l.kv_layout());
        let kind = text.embed_tokens.ws.kind();
        let mut arena =
            SlotArena::new(text.layers.len(), slot_count, layout, capacity as i64, kind, self.policy.device())?;
        let mut stats = EngineStats {
            slots: slot_count,
            arena_bytes: slot_bytes(self.policy, capacity as i64) * slot_count as u64,
            ..Default::default()
        };
        let mut live: Vec<Slot> = Vec::new();
        let mut logits: Option<Tensor> = None;
        let mut next_prompt = 0;
        let mut occupied = 0usize;
        loop {
            // Admit waiting prompts into free slots, G slots each.
            let take =
                ((slot_count - live.len()) / g).min(source.len() - next_prompt).min(self.config.prefill_prompts.max(1));
            if take > 0 {
                let first = self.admit(source, next_prompt..next_prompt + take, g, sampling, &mut arena, &mut live)?;
                logits = Some(match logits {
                    Some(l) => Tensor::cat(&[l, first], 0),
                    None => first,
                });
                next_prompt += take;
                stats.prefills += 1;
            }
            let Some(current) = logits.take() else { break };

            // Draw a token for every live slot.
            let uniforms: Vec<f32> = if sampling.temperature > 0.0 {
                live.iter_mut().map(|s| unit(&mut s.stream) as f32).collect()
            } else {
                Vec::new()
            };
            let (chosen, chosen_logp) = draw(&current, &uniforms, sampling);
            let ids = Vec::<i64>::try_from(&chosen.to_device(Device::Cpu))?;
            let lps = Vec::<f32>::try_from(&chosen_logp.to_device(Device::Cpu))?;
            let mut continuing = Vec::with_capacity(live.len());
            for (i, slot) in live.iter().enumerate() {
                let r = slot.response;
                out.tokens[r].push(ids[i]);
                out.logprobs[r].push(lps[i]);
                out.stopped[r] = sampling.stop_tokens.contains(&ids[i]);
                if !out.stopped[r] && out.tokens[r].len() < sampling.max_new_tokens {
                    continuing.push(i);
                }
            }

            // Retire finished slots: live ones move into the holes, so they stay 0..m.
            let m = continuing.len();
            let mut movers = continuing.iter().copied().filter(|&i| i >= m);
            let mut order: Vec<usize> = Vec::with_capacity(m);
            let keeps: std::collections::HashSet<usize> = continuing.iter().copied().collect();
            for hole in 0..m {
                if keeps.contains(&hole) {
                    order.push(hole);
                } else {
                    let from = movers.next().expect("as many movers as holes below m");
                    arena.move_slot(from, hole);
                    order.push(from);
                }
            }
            arena.truncate(m);
            let mut previous: Vec<Option<Slot>> = live.into_iter().map(Some).collect();
            live = order.iter().map(|&i| previous[i].take().expect("each slot moves once")).collect();
            if m > 0 {
                let tokens: Vec<i64> = order.iter().map(|&i| ids[i]).collect();
                logits = Some(self.decode(&mut arena, &tokens, &mut live)?);
                stats.decode_steps += 1;
                occupied += m;
            }
        }
        stats.occupancy = occupied as f64 / (stats.decode_steps.max(1) * slot_count) as f64;
        Ok((out, stats))
    }

    /// Prefills prompts `range`, fills G slots each; returns their first logits
    /// `[G * prompts, vocab]` in slot order.
    fn admit(
        &self,
        source: &dyn PromptSource,
        range: std::ops::Range<usize>,
        g: usize,
        sampling: &SamplingConfig,
        arena: &mut SlotArena,
        live: &mut Vec<Slot>,
    ) -> Result<Tensor, PolicyError> {
        let indices: Vec<usize> = range.collect();
        let mut first = None;
        source.with_batch(&indices, &mut |inputs| {
            let (hidden, state) = self.policy.forward_hidden(inputs)?;
            let lens =
                Vec::<i64>::try_from(&state.key_valid.sum_dim_intlist(1, false, Kind::Int64).to_device(Device::Cpu))?;
            for (row, &prompt) in indices.iter().enumerate() {
                for sample in 0..g {
                    arena.load(live.len(), &state, row as i64, lens[row])?;
                    live.push(Slot {
                        response: prompt * g + sample,
                        stream: response_stream(sampling.seed, source.key(prompt), sample),
                        position: state.next_position[row],
                    });
                }
            }
            let last = self.policy.logits(&hidden.select(1, -1));
            first = Some(last.repeat_interleave_self_int(g as i64, 0, None));
            Ok(())
        })?;
        first.ok_or_else(|| PolicyError::Input("the prompt source did not run the prefill".into()))
    }

    /// One token for each live slot `0..tokens.len()`: logits `[n, vocab]`.
    fn decode(&self, arena: &mut SlotArena, tokens: &[i64], live: &mut [Slot]) -> Result<Tensor, PolicyError> {
        let device = self.policy.device();
        let n = tokens.len() as i64;
        let text = self.policy.text_model();
        let x = text.embed_tokens.forward(&Tensor::from_slice(tokens).to_device(device).view([n, 1]));
        let positions: Vec<i64> = live.iter().map(|s| s.position).collect();
        let positions = Tensor::from_slice(&positions).to_device(device).view([1, n, 1]).expand([3, n, 1], false);
        let (cos, sin) = self.policy.rope(&positions);
        let (cos, sin) = (cos.to_kind(x.kind()), sin.to_kind(x.kind()));
        let step = arena.step(live.len())?;
        let mut x = x;
        for (i, layer) in text.layers.iter().enumerate() {
            x = layer.forward_slots(&x, &cos, &sin, &step.mask, arena.view(i, &step));
        }
        for slot in live.iter_mut() {
            slot.position += 1;
        }
        Ok(self.policy.logits(&text.norm.forward(&x)).squeeze_dim(1))
    }
}
