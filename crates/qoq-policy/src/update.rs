//! The forward and backward of a policy update, in memory that grows neither with
//! tokens x vocabulary nor, with recomputation, with tokens x layers.
//!
//! **Chunked log-probs.** The final hidden states of the response tokens are taken alone
//! (`[N, hidden]`, pads dropped). The head, the log-softmax and the gather run
//! `chunk_tokens` rows at a time, so the largest logits tensor is `[chunk_tokens, vocab]`
//! instead of `[B, T, vocab]`; the entropy is computed from the same chunk without a graph.
//! Every loss the trainer uses is a function of the per-token log-probs, so the caller
//! differentiates it with respect to them (a leaf `[B, T]`) and hands that gradient to
//! [`UpdateForward::backward`], which recomputes each chunk with autograd and backpropagates
//! it into the hidden states. That is the chain rule cut at the log-probs, hence exact.
//!
//! **Recomputation** (`recompute`). The forward runs without autograd and keeps only each
//! decoder layer's input. The backward then goes last layer to first: recompute the layer
//! with autograd from its (detached) input, backpropagate `(y * g).sum()`, and take the
//! input's gradient as the next `g`. The vision tower keeps each block's input too and is
//! recomputed block by block after the decoder (`vision_recompute.rs`): the merger, the
//! blocks last to first, the patch embedding; the embeddings take their gradient with the
//! media's merged tokens as leaves. DeepStack features get the gradient of the
//! hidden states at their placeholders after the layer they are added to.
//!
//! ```no_run
//! # fn demo(policy: &dyn qoq_policy::Policy, inputs: &qoq_policy::Inputs<'_>, responses: &[Vec<i64>]) -> Result<(), qoq_policy::PolicyError> {
//! use qoq_policy::{forward_for_update, UpdateOptions};
//! let fwd = forward_for_update(policy, inputs, responses, 1.0, &UpdateOptions::default())?;
//! let logp = fwd.logp.detach().set_requires_grad(true);
//! let loss = -logp.sum(tch::Kind::Float); // any loss of the log-probs
//! loss.backward();
//! fwd.backward(policy, inputs, &logp.grad())?; // parameter gradients, as loss.backward() through the model
//! # Ok(()) }
//! ```

use tch::nn::Module;
use tch::{Kind, Tensor};

use crate::gate::{ParamGate, Unit, WholeModel};
use crate::layers::causal_mask;
use crate::layers::kv_cache::LayerCache;
use crate::policy::{Embedded, Inputs, Policy};
use crate::vision_recompute::{self, VisionTape};
use crate::PolicyError;

/// How an update's forward spends memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateOptions {
    /// Response tokens per head / log-softmax chunk (the logits tensor is
    /// `[chunk_tokens, vocab]` fp32).
    pub chunk_tokens: i64,
    /// Keep only each decoder layer's input in the forward and recompute in the backward.
    pub recompute: bool,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        Self { chunk_tokens: DEFAULT_CHUNK_TOKENS, recompute: true }
    }
}

/// 128 rows of a 151,936-entry vocabulary are 78 MB of fp32 logits; a chunk holds up to
/// four such tensors at once (logits, log-softmax, and in the backward their gradients),
/// against 20 GB per tensor for one micro-batch of 8 x 4,096 tokens unchunked. On the demo
/// 128 rows peak at 1.1 GB RSS, 512 at 1.7 GB; on a GPU a [128, hidden] x [hidden, vocab]
/// matmul is still large enough to run near peak.
pub const DEFAULT_CHUNK_TOKENS: i64 = 128;

/// The forward of an update: the log-probs and entropies, and what the backward needs.
pub struct UpdateForward {
    /// `[B, T]` log-probs of the response tokens (0 at pads), without a graph.
    pub logp: Tensor,
    /// `[B, T]` entropies of the sampling distribution (0 at pads), without a graph.
    pub entropy: Tensor,
    layout: ResponseLayout,
    temperature: f64,
    options: UpdateOptions,
    tape: Tape,
}

enum Tape {
    /// The whole forward's graph, up to the final hidden states `[B, L + T, hidden]`.
    Graph { hidden: Tensor },
    /// No graph: each decoder layer's input, then the last layer's output.
    Recompute {
        embedded: Embedded,
        /// Each media's vision pass, block inputs kept (`vision_recompute.rs`).
        vision: Vec<VisionTape>,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        layer_inputs: Vec<Tensor>,
        last: Tensor,
    },
}

/// Runs the forward of `responses` after the prompt rows of `inputs` (one response per row).
pub fn forward_for_update<P: Policy + ?Sized>(
    policy: &P,
    inputs: &Inputs<'_>,
    responses: &[Vec<i64>],
    temperature: f64,
    options: &UpdateOptions,
) -> Result<UpdateForward, PolicyError> {
    forward_for_update_gated(policy, inputs, responses, temperature, options, &WholeModel)
}

/// [`forward_for_update`] for sharded parameters: `gate` gathers each unit's parameters
/// just before it runs and releases them after (see [`crate::gate`]).
pub fn forward_for_update_gated<P: Policy + ?Sized>(
    policy: &P,
    inputs: &Inputs<'_>,
    responses: &[Vec<i64>],
    temperature: f64,
    options: &UpdateOptions,
    gate: &dyn ParamGate,
) -> Result<UpdateForward, PolicyError> {
    check_chunk(options.chunk_tokens)?;
    let layout = ResponseLayout::new(policy, inputs, responses)?;
    let full = inputs.with_ids(&layout.full_ids, &layout.full_mask);
    let layers = &policy.text_model().layers;
    let tape = if options.recompute {
        tch::no_grad(|| -> Result<Tape, PolicyError> {
            gate.gather(Unit::Input, false)?;
            let mut vision = Vec::new();
            let embedded = policy.embed_with(&full, &mut |pixels, grids| {
                let tape = vision_recompute::forward(policy.vision_tower(), pixels, grids);
                let out = (tape.merged.shallow_clone(), tape.taps.iter().map(Tensor::shallow_clone).collect());
                vision.push(tape);
                Ok(out)
            })?;
            gate.release(Unit::Input)?;
            let (cos, sin, mask) = rope_and_mask(policy, &embedded);
            let mut layer_inputs = Vec::new();
            let mut x = embedded.embeds.shallow_clone();
            for (i, layer) in layers.iter().enumerate() {
                gate.gather(Unit::Layer(i), false)?;
                let y = layer.forward(&x, &cos, &sin, &mask, &mut LayerCache::discarding());
                gate.release(Unit::Layer(i))?;
                layer_inputs.push(x);
                x = embedded.inject(i, y);
            }
            Ok(Tape::Recompute { embedded, vision, cos, sin, mask, layer_inputs, last: x })
        })?
    } else {
        // The graph holds every parameter until the backward.
        for unit in units(layers.len()) {
            gate.gather(unit, true)?;
        }
        Tape::Graph { hidden: forward_to_norm(policy, &full)? }
    };
    if options.recompute {
        gate.gather(Unit::Head, false)?;
    }
    let hidden = match &tape {
        Tape::Graph { hidden } => hidden.detach(),
        Tape::Recompute { last, .. } => tch::no_grad(|| policy.text_model().norm.forward(last)),
    };
    let h = tch::no_grad(|| layout.select(&hidden));
    let (logp, entropy) = tch::no_grad(|| head_chunks(policy, &h, &layout.targets, temperature, options.chunk_tokens));
    if options.recompute {
        gate.release(Unit::Head)?;
    }
    let (logp, entropy) = (layout.unflatten(&logp), layout.unflatten(&entropy));
    Ok(UpdateForward { logp, entropy, layout, temperature, options: *options, tape })
}

/// The gate calls of one micro-batch's [`forward_for_update_gated`] and
/// [`UpdateForward::backward_gated`], in their order, without computing anything: a rank
/// with fewer micro-batches than the others makes them, so the collectives of a sharded
/// gate match; its gradient contribution is zero.
pub fn idle_update(layers: usize, options: &UpdateOptions, gate: &dyn ParamGate) -> Result<(), PolicyError> {
    for unit in units(layers) {
        gate.gather(unit, !options.recompute)?;
        if options.recompute {
            gate.release(unit)?;
        }
    }
    for unit in units(layers).rev() {
        if options.recompute {
            gate.gather(unit, true)?;
        }
        gate.reduce(unit)?;
    }
    Ok(())
}

/// Every unit of a model of `layers` decoder layers, in forward order.
fn units(layers: usize) -> impl DoubleEndedIterator<Item = Unit> {
    std::iter::once(Unit::Input).chain((0..layers).map(Unit::Layer)).chain(std::iter::once(Unit::Head))
}

impl UpdateForward {
    /// Accumulates into the parameters' `.grad` what `loss.backward()` would, for a loss
    /// whose gradient with respect to [`Self::logp`] is `grad_logp` `[B, T]`. `inputs` are
    /// the prompt inputs the forward got.
    pub fn backward<P: Policy + ?Sized>(
        self,
        policy: &P,
        inputs: &Inputs<'_>,
        grad_logp: &Tensor,
    ) -> Result<(), PolicyError> {
        self.backward_gated(policy, inputs, grad_logp, &WholeModel)
    }

    /// [`Self::backward`] for sharded parameters: each unit is gathered before its
    /// recomputation and reduced right after its backward (see [`crate::gate`]). Every unit
    /// is reduced, even when the micro-batch has no response token, so the ranks' calls match.
    pub fn backward_gated<P: Policy + ?Sized>(
        self,
        policy: &P,
        inputs: &Inputs<'_>,
        grad_logp: &Tensor,
        gate: &dyn ParamGate,
    ) -> Result<(), PolicyError> {
        let UpdateForward { layout, temperature, options, tape, .. } = self;
        let (b, t) = layout.shape;
        if grad_logp.size() != [b, t] {
            return Err(PolicyError::Input(format!(
                "grad_logp is {:?}, the log-probs are [{b}, {t}]",
                grad_logp.size()
            )));
        }
        let g = grad_logp.to_kind(Kind::Float).reshape([-1]).index_select(0, &layout.slots);
        let norm = &policy.text_model().norm;
        let head = |h: &Tensor| head_backward(policy, h, &layout.targets, &g, temperature, options.chunk_tokens);
        let layers = &policy.text_model().layers;
        match tape {
            Tape::Graph { hidden } => {
                let h = layout.select(&hidden);
                let grad_h = head(&h);
                if let Some(grad_h) = grad_h {
                    (h * grad_h).sum(Kind::Float).backward();
                }
                for unit in units(layers.len()).rev() {
                    gate.reduce(unit)?;
                }
            }
            Tape::Recompute { embedded, vision, cos, sin, mask, mut layer_inputs, last } => {
                gate.gather(Unit::Head, true)?;
                let last = last.detach().set_requires_grad(true);
                let h = layout.select(&norm.forward(&last));
                let grad_h = head(&h);
                if let Some(grad_h) = &grad_h {
                    (h * grad_h).sum(Kind::Float).backward();
                }
                gate.reduce(Unit::Head)?;
                let Some(_) = grad_h else {
                    // Nothing flows further back; the other units still take their turn
                    // (zeros), so every rank makes the same collectives.
                    for unit in units(layers.len()).rev().skip(1) {
                        gate.gather(unit, true)?;
                        gate.reduce(unit)?;
                    }
                    return Ok(());
                };
                let mut grad = last.grad();
                // Gradients of the DeepStack features: the hidden states' gradient at their
                // placeholders after the layer each is added to.
                let mut feature_grads: Vec<Vec<Option<Tensor>>> =
                    embedded.injections.iter().map(|(_, f)| (0..f.len()).map(|_| None).collect()).collect();
                for i in (0..layers.len()).rev() {
                    for (k, (positions, features)) in embedded.injections.iter().enumerate() {
                        if i < features.len() {
                            feature_grads[k][i] = Some(rows_at(&grad, positions));
                        }
                    }
                    // Popped: each input is freed once its layer is done.
                    let x = layer_inputs.pop().expect("one input per layer").detach().set_requires_grad(true);
                    gate.gather(Unit::Layer(i), true)?;
                    let y = layers[i].forward(&x, &cos, &sin, &mask, &mut LayerCache::discarding());
                    (y * &grad).sum(Kind::Float).backward();
                    gate.reduce(Unit::Layer(i))?;
                    grad = x.grad();
                }
                // The input stage: the embeddings with the media's merged tokens as leaves
                // (their gradient is what the vision tower's backward starts from), then
                // each tower block by block.
                gate.gather(Unit::Input, true)?;
                let full = inputs.with_ids(&layout.full_ids, &layout.full_mask);
                let mut leaves = Vec::new();
                let again = policy.embed_with(&full, &mut |_, _| {
                    let tape = &vision[leaves.len()];
                    let leaf = tape.merged.detach().set_requires_grad(true);
                    leaves.push(leaf.shallow_clone());
                    Ok((leaf, tape.taps.iter().map(Tensor::detach).collect()))
                })?;
                if again.embeds.requires_grad() {
                    (&again.embeds * &grad).sum(Kind::Float).backward();
                }
                drop(again);
                // Qwen3-VL's injections are per media, in the tapes' order.
                for (k, (tape, leaf)) in vision.into_iter().zip(&leaves).enumerate() {
                    let merged_grad = leaf.grad();
                    let taps = feature_grads.get(k).map(Vec::as_slice).unwrap_or(&[]);
                    vision_recompute::backward(
                        policy.vision_tower(),
                        tape,
                        merged_grad.defined().then_some(&merged_grad),
                        taps,
                    );
                }
                gate.reduce(Unit::Input)?;
            }
        }
        Ok(())
    }
}

/// Backpropagates the chunks' log-probs of `targets` (gradient `g` [N]) into the head's
/// parameters; returns the gradient of the hidden rows `h` [N, hidden], or None when they
/// need none.
fn head_backward<P: Policy + ?Sized>(
    policy: &P,
    h: &Tensor,
    targets: &Tensor,
    g: &Tensor,
    temperature: f64,
    chunk_tokens: i64,
) -> Option<Tensor> {
    let leaf = h.detach().set_requires_grad(true);
    let n = leaf.size()[0];
    let mut start = 0;
    while start < n {
        let len = chunk_tokens.min(n - start);
        let (lp, _) =
            chunk_logp(policy, &leaf.narrow(0, start, len), &targets.narrow(0, start, len), temperature, false);
        (lp * g.narrow(0, start, len)).sum(Kind::Float).backward();
        start += len;
    }
    (n > 0 && h.requires_grad()).then(|| leaf.grad())
}

/// The final hidden states `[B, L, hidden]` with the whole graph (no cache kept).
fn forward_to_norm<P: Policy + ?Sized>(policy: &P, inputs: &Inputs<'_>) -> Result<Tensor, PolicyError> {
    let e = policy.embed(inputs)?;
    let (cos, sin, mask) = rope_and_mask(policy, &e);
    let text = policy.text_model();
    let mut x = e.embeds.shallow_clone();
    for (i, layer) in text.layers.iter().enumerate() {
        x = e.inject(i, layer.forward(&x, &cos, &sin, &mask, &mut LayerCache::discarding()));
    }
    Ok(text.norm.forward(&x))
}

fn rope_and_mask<P: Policy + ?Sized>(policy: &P, e: &Embedded) -> (Tensor, Tensor, Tensor) {
    let kind = e.embeds.kind();
    let (cos, sin) = policy.rope(&e.positions);
    (cos.to_kind(kind), sin.to_kind(kind), causal_mask(&e.key_valid, kind))
}

/// Rows of `x` [B, L, hidden] where `positions` [B, L] is true, as `[n, hidden]`.
fn rows_at(x: &Tensor, positions: &Tensor) -> Tensor {
    let width = x.size()[2];
    x.reshape([-1, width]).index_select(0, &positions.reshape([-1]).nonzero().squeeze_dim(1))
}

/// Log-probs of `targets` under rows `h` [n, hidden] (and their entropies when asked),
/// one chunk at a time.
pub(crate) fn head_chunks<P: Policy + ?Sized>(
    policy: &P,
    h: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk_tokens: i64,
) -> (Tensor, Tensor) {
    let n = h.size()[0];
    let (mut logps, mut entropies) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = chunk_tokens.min(n - start);
        let (lp, ent) = chunk_logp(policy, &h.narrow(0, start, len), &targets.narrow(0, start, len), temperature, true);
        logps.push(lp);
        entropies.extend(ent);
        start += len;
    }
    if logps.is_empty() {
        let empty = Tensor::zeros([0], (Kind::Float, h.device()));
        return (empty.shallow_clone(), empty);
    }
    (Tensor::cat(&logps, 0), Tensor::cat(&entropies, 0))
}

/// One chunk: head, temperature, log-softmax in fp32, gather; the entropy without a graph.
fn chunk_logp<P: Policy + ?Sized>(
    policy: &P,
    h: &Tensor,
    targets: &Tensor,
    temperature: f64,
    entropy: bool,
) -> (Tensor, Option<Tensor>) {
    // In place where autograd allows (the head's matmul keeps its inputs, not its output),
    // so a chunk holds as few [chunk, vocab] tensors as it can.
    let mut logits = policy.logits(h).to_kind(Kind::Float);
    if temperature > 0.0 && temperature != 1.0 {
        let _ = logits.g_div_scalar_(temperature);
    }
    let logp_all = logits.log_softmax(-1, Kind::Float);
    drop(logits);
    let lp = logp_all.gather(1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
    let ent = entropy.then(|| {
        tch::no_grad(|| {
            let mut p_logp = logp_all.exp();
            let _ = p_logp.g_mul_(&logp_all);
            -p_logp.sum_dim_intlist(-1, false, Kind::Float)
        })
    });
    (lp, ent)
}

/// Prompt (left-padded) then response (right-padded) ids, and where the response tokens
/// are predicted.
pub(crate) struct ResponseLayout {
    pub full_ids: Tensor,
    pub full_mask: Tensor,
    /// Flat positions in `[B * (L + T)]` whose hidden state predicts a response token.
    pub rows: Tensor,
    pub targets: Tensor,
    /// Flat positions of those tokens in `[B * T]`.
    pub slots: Tensor,
    /// (B, T).
    pub shape: (i64, i64),
}

impl ResponseLayout {
    pub fn new<P: Policy + ?Sized>(
        policy: &P,
        inputs: &Inputs<'_>,
        responses: &[Vec<i64>],
    ) -> Result<Self, PolicyError> {
        let device = policy.device();
        let (ids, prompt_mask) = inputs.ids_and_mask(device)?;
        let (b, l) = ids.size2()?;
        if responses.len() as i64 != b {
            return Err(PolicyError::Input(format!("{} responses for {b} prompt rows", responses.len())));
        }
        let t = responses.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let (mut resp, mut resp_mask) = (vec![0i64; (b * t) as usize], vec![0i64; (b * t) as usize]);
        let (mut rows, mut targets, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (i, r) in responses.iter().enumerate() {
            for (j, &tok) in r.iter().enumerate() {
                let slot = i as i64 * t + j as i64;
                resp[slot as usize] = tok;
                resp_mask[slot as usize] = 1;
                // Position l - 1 + j predicts response token j.
                rows.push(i as i64 * (l + t) + l - 1 + j as i64);
                targets.push(tok);
                slots.push(slot);
            }
        }
        let on = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        let full_ids = Tensor::cat(&[ids, on(&resp).view([b, t])], 1);
        let full_mask = Tensor::cat(&[prompt_mask, on(&resp_mask).view([b, t])], 1);
        Ok(Self { full_ids, full_mask, rows: on(&rows), targets: on(&targets), slots: on(&slots), shape: (b, t) })
    }

    /// The response rows of hidden states `[B, L + T, hidden]`: `[N, hidden]`.
    pub fn select(&self, hidden: &Tensor) -> Tensor {
        let width = hidden.size()[2];
        hidden.reshape([-1, width]).index_select(0, &self.rows)
    }

    /// Values of the N response tokens back to `[B, T]` (0 at pads).
    pub fn unflatten(&self, values: &Tensor) -> Tensor {
        let (b, t) = self.shape;
        Tensor::zeros([b * t], (Kind::Float, values.device())).index_copy(0, &self.slots, values).view([b, t])
    }
}

/// Log-probs and entropies `[B, T]` of `responses` after the prompt rows of `inputs` (0 at
/// pads), by the same operations as [`forward_for_update`], so a first update's ratio is
/// exactly 1. The logits exist `chunk_tokens` rows at a time; with autograd on, the
/// log-probs carry the graph (and every chunk's with it).
pub fn score<P: Policy + ?Sized>(
    policy: &P,
    inputs: &Inputs<'_>,
    responses: &[Vec<i64>],
    temperature: f64,
    chunk_tokens: i64,
) -> Result<(Tensor, Tensor), PolicyError> {
    check_chunk(chunk_tokens)?;
    let layout = ResponseLayout::new(policy, inputs, responses)?;
    let hidden = forward_to_norm(policy, &inputs.with_ids(&layout.full_ids, &layout.full_mask))?;
    let (logp, entropy) = head_chunks(policy, &layout.select(&hidden), &layout.targets, temperature, chunk_tokens);
    Ok((layout.unflatten(&logp), layout.unflatten(&entropy)))
}

fn check_chunk(chunk_tokens: i64) -> Result<(), PolicyError> {
    if chunk_tokens < 1 {
        return Err(PolicyError::Input(format!("chunk_tokens must be at least 1, got {chunk_tokens}")));
    }
    Ok(())
}
