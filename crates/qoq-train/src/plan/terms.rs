//! The terms of the plan: the batch sizes a rank sees, and the bytes each allocation takes,
//! each modelled on the code named beside it. Byte counts are per rank.

use qoq_policy::ModuleGroup;

use super::formulas::{
    layer_activation_bytes, layer_nograd_bytes, logits_chunk_bytes, sampling_bytes_per_entry, vision_activation_bytes,
    vision_nograd_bytes,
};
use super::shape::ModelShape;
use super::{Phase, Term};
use crate::config::{DeviceConfig, Dtype, GradDtype, Sharding, TrainConfig};

/// Peak RSS of `train` on this machine's CPU libtorch before any step (libtorch, the
/// tokenizer, the data loader and the process), measured with `train --max-steps 0` on
/// the demo's tiny model minus its weights, gradients and moments (docs/memory.md).
pub const CPU_RUNTIME_BYTES: f64 = 220.0 * (1u64 << 20) as f64;

/// A CUDA rank's memory outside PyTorch's allocator: the CUDA context with the kernels of
/// libtorch_cuda, cuBLAS and cuDNN handles and workspaces. PyTorch's documentation notes
/// this context is not counted by `memory_allocated`; pytorch/pytorch#34323 measures 781 MB
/// right after start-up; 1 GiB leaves room for the cuBLAS / cuDNN workspaces.
pub const CUDA_CONTEXT_BYTES: f64 = (1u64 << 30) as f64;

/// What one rank works on at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    /// Bytes per element of `model.dtype`.
    pub b: f64,
    pub bf16: bool,
    pub world: usize,
    /// Responses per prompt.
    pub g: i64,
    /// Prompt tokens (`prompt.max_prompt_tokens`), response tokens (`rl.max_new_tokens`).
    pub prompt: i64,
    pub new_tokens: i64,
    /// Prompts per prefill and the rows they decode (x G).
    pub gen_prompts: i64,
    /// The rollout engine's KV slots (rl.rollout_slots, capped by rl.kv_cache_gb and by
    /// the step's responses).
    pub slots: i64,
    pub gen_rows: i64,
    /// Sequences per forward in scoring, RL updates and SFT.
    pub score_rows: i64,
    pub update_rows: i64,
    pub sft_rows: i64,
    /// Prompts of one RL step on this rank.
    pub step_prompts: i64,
    /// Vision patches of one image at `processor.max_pixels` (one image per prompt).
    pub patches: i64,
    pub val_rows: i64,
    pub val_new_tokens: i64,
    pub phases: Vec<Phase>,
}

/// The engine's slots (rollout.rs `rl_engine_sizing`, engine.rs): `rl.rollout_slots` or
/// generation_batch x G, capped by what `rl.kv_cache_gb` holds and by `responses`.
fn rollout_slots(c: &TrainConfig, model: &ModelShape, responses: i64) -> i64 {
    let rl = &c.rl;
    let t = &model.text;
    let per_slot = 2.0
        * (t.layers * t.kv_heads * t.head_dim) as f64
        * (c.prompt.max_prompt_tokens + rl.max_new_tokens) as f64
        * bytes_of(c.model.dtype);
    let mut slots = rl.rollout_slots.unwrap_or(rl.generation_batch * rl.samples_per_prompt) as i64;
    if let Some(gb) = rl.kv_cache_gb {
        slots = slots.min((gb * (1u64 << 30) as f64 / per_slot.max(1.0)) as i64);
    }
    slots.min(responses).max(1)
}

impl Sizes {
    pub fn new(c: &TrainConfig, model: &ModelShape, world: usize) -> Self {
        let w = world.max(1) as i64;
        let rl = &c.rl;
        let g = rl.samples_per_prompt as i64;
        // data.rs next_prompts: each rank prepares prompts_per_step / N of a step's prompts;
        // rollout.rs: generate calls of generation_batch of them; rl_step.rs: micro-batches
        // of rl.micro_batch rows within each optimizer batch's share.
        let step_prompts = (rl.prompts_per_step as i64 / w).max(1);
        let gen_prompts = (rl.generation_batch as i64).min(step_prompts);
        let update_share = (rl.prompts_per_update as i64 / w).max(1) * g;
        // The image processor of the family with [processor] applied (smart resize keeps
        // the pixels under max_pixels in whole merge units).
        let proc = c.processor.resolve_on(model.family.processor_defaults());
        let unit = (proc.patch_size * proc.merge_size) as i64;
        let merge = (proc.merge_size * proc.merge_size) as i64;
        let patches = (proc.max_pixels as i64 / (unit * unit)) * merge;
        // micro_batches.rs: with a token budget, a micro-batch of sequences at the longest
        // (prompt + new tokens) holds budget / length of them (at least one).
        let seq = (c.prompt.max_prompt_tokens + rl.max_new_tokens).max(1) as i64;
        let packed = |rows: i64, budget: Option<usize>| match budget {
            Some(budget) => rows.min((budget as i64 / seq).max(1)),
            None => rows,
        };
        let update_rows = packed((rl.micro_batch as i64).min(update_share), rl.micro_batch_tokens);
        let sft_rows = (c.sft.micro_batch as i64).min((c.sft.batch_size as i64 / w).max(1));
        let v = &c.validation;
        let mut phases = Vec::new();
        if c.sft.steps > 0 {
            phases.extend([Phase::SftHead, Phase::SftLayers, Phase::SftInput]);
        }
        if rl.steps > 0 {
            phases.extend([Phase::Prefill, Phase::Decode, Phase::Scoring]);
            phases.extend([Phase::UpdateHead, Phase::UpdateLayers, Phase::UpdateInput]);
        }
        phases.extend([Phase::Optimizer, Phase::Checkpoint]);
        if v.every > 0 {
            phases.push(Phase::Validation);
        }
        Self {
            b: bytes_of(c.model.dtype),
            bf16: c.model.dtype == Dtype::Bfloat16,
            world,
            g,
            prompt: c.prompt.max_prompt_tokens as i64,
            new_tokens: rl.max_new_tokens as i64,
            gen_prompts,
            gen_rows: gen_prompts * g,
            slots: rollout_slots(c, model, step_prompts * g),
            // rollout.rs score_rows packs scoring as the update (per optimizer batch).
            score_rows: update_rows,
            update_rows,
            sft_rows: packed(sft_rows, c.sft.micro_batch_tokens),
            step_prompts,
            patches,
            // validation.rs: each rank answers max_samples / N samples, batch_size at a time.
            val_rows: (v.batch_size as i64).min((v.max_samples as i64 + w - 1) / w),
            val_new_tokens: v.max_new_tokens.unwrap_or(rl.max_new_tokens) as i64,
            phases,
        }
    }

    /// One line on what the plan assumes.
    pub fn describe(&self) -> String {
        let rl = if self.phases.contains(&Phase::Decode) {
            format!(
                "rollouts in {} slots of {} prompt + {} new tokens, {} prompts (x G {}) per prefill; micro-batches of {} (scoring), {} (RL update)",
                self.slots, self.prompt, self.new_tokens, self.gen_prompts, self.g, self.score_rows, self.update_rows
            )
        } else {
            String::new()
        };
        let sft = if self.phases.contains(&Phase::SftHead) {
            format!("SFT micro-batches of {} x ({} + {}) tokens", self.sft_rows, self.prompt, self.new_tokens)
        } else {
            String::new()
        };
        let parts: Vec<String> = [rl, sft].into_iter().filter(|p| !p.is_empty()).collect();
        format!("  per rank: {}; one image of {} patches per prompt", parts.join("; "), self.patches)
    }
}

pub fn bytes_of(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Float32 => 4.0,
        Dtype::Bfloat16 => 2.0,
    }
}

/// The terms of one rank; `main`: rank 0 (it alone assembles the checkpoint).
pub fn rank_terms(c: &TrainConfig, model: &ModelShape, s: &Sizes, main: bool) -> Vec<Term> {
    let t = &model.text;
    let counts = model.counts();
    let freeze = &c.model.freeze;
    let (total, trainable) = (counts.total() as f64, counts.trainable(freeze) as f64);
    let b = s.b;
    let w = s.world as f64;
    // As the trainer builds it: ZeRO-1 only over several ranks, the flat shards always.
    let mode = match c.distributed.sharding() {
        Sharding::Optimizer if s.world <= 1 => Sharding::None,
        m => m,
    };
    let flat = matches!(mode, Sharding::Gradients | Sharding::Full);
    let shard = if mode == Sharding::None { 1.0 } else { w };
    let unit = model.largest_unit(freeze) as f64;
    let rb = if c.model.grad_dtype == GradDtype::Bfloat16 { 2.0 } else { 4.0 };
    let dtype = if s.bf16 { "bfloat16" } else { "float32" };
    let cpu = c.run.device == DeviceConfig::Cpu;
    let (h, v) = (t.hidden as f64, t.vocab as f64);
    let d = t.head_dim as f64;
    let mut out = vec![
        if mode == Sharding::Full {
            Term::new(
                "parameters",
                &[],
                (total - trainable) * b,
                format!(
                    "the {} frozen x {b} B ({dtype}) only: trainable ones live as shards (fsdp.rs)",
                    counts.total() - counts.trainable(freeze)
                ),
            )
        } else {
            Term::new(
                "parameters",
                &[],
                total * b,
                format!("{} x {b} B ({dtype}); every variable of the family's model.rs", counts.total()),
            )
        },
        if flat {
            Term::new(
                "fp32 master weights",
                &[],
                trainable * 4.0 / w,
                "trainable x 4 B / N: this rank's flat shards (fsdp.rs)",
            )
        } else if s.bf16 {
            Term::new(
                "fp32 master weights",
                &[],
                trainable * 4.0,
                "trainable x 4 B, whole on every rank (precision.rs MasterWeights)",
            )
        } else {
            Term::new("fp32 master weights", &[], 0.0, "none: float32 weights are their own master")
        },
        Term::new(
            "AdamW moments",
            &[],
            2.0 * trainable * 4.0 / shard,
            "2 x trainable x 4 B (optim.rs AdamW::new; /N: sharded.rs, fsdp.rs)",
        ),
        if flat {
            Term::new("gradients", &[], trainable * 4.0 / w, "trainable x 4 B / N: the fp32 gradient shard (fsdp.rs)")
        } else {
            Term::new(
                "gradients",
                &[],
                trainable * b + if s.bf16 { trainable * 4.0 } else { 0.0 },
                format!(
                    "trainable x {b} B{}: every .grad exists from the optimizer's start (parallel.rs materialize_grads)",
                    if s.bf16 { " on the weights + 4 B on the masters" } else { "" }
                ),
            )
        },
        Term::new(
            "reference model",
            &[],
            if c.algorithm.needs_reference() && c.rl.steps > 0 {
                total * b / if mode == Sharding::Full { w } else { 1.0 }
            } else {
                0.0
            },
            if mode == Sharding::Full {
                "1/N of a second copy (kl_coef != 0 or DRPO kl_damping), gathered for its scoring in the rollouts' place (fsdp.rs FlatShards::frozen)"
            } else {
                "a second copy when kl_coef != 0 or DRPO kl_damping (trainer.rs Trainer::new)"
            },
        ),
        gathered_unit_term(mode, unit, b, rb),
        if mode == Sharding::Full {
            Term::new(
                "gathered model for rollouts",
                &[Phase::Prefill, Phase::Decode, Phase::Scoring, Phase::Validation],
                trainable * b,
                format!("trainable x {b} B: gather_all for generation and scoring (fsdp.rs)"),
            )
            .block(unit * b)
        } else {
            Term::new("gathered model for rollouts", &[], 0.0, "parameters whole on every rank")
        },
        if cpu {
            Term::new(
                "runtime baseline",
                &[],
                CPU_RUNTIME_BYTES,
                "libtorch, tokenizer, data loader, process: measured on this CPU",
            )
        } else {
            Term::new(
                "runtime baseline",
                &[],
                CUDA_CONTEXT_BYTES,
                "CUDA context, cuBLAS/cuDNN workspaces (constant; see docs/memory.md)",
            )
        },
    ];
    if cpu {
        let pixels =
            (model.vision.in_channels * model.vision.temporal_patch * model.vision.patch * model.vision.patch) as f64;
        out.push(Term::new(
            "a step's prompts (host)",
            &[],
            (s.step_prompts * s.patches) as f64 * pixels * 4.0,
            "pixel values of this rank's prompts (prompts.rs); host memory, on the device only on CPU",
        ));
    }
    let kv_position = 2.0 * (t.layers * t.kv_heads) as f64 * d * b;
    // One layer's keys (or values) per row and position: a KV cache buffer's unit.
    let kv_buffer = kv_position / (2 * t.layers.max(1)) as f64;
    let widest = (t.intermediate.max(t.heads * t.head_dim).max(t.hidden)) as f64 * b;
    if c.rl.steps > 0 {
        let (bg, l, n) = (s.gen_prompts, s.prompt, s.new_tokens);
        let first = (bg * (l + 64)) as f64 * kv_position;
        out.push(
            Term::new(
                "KV cache: prompts",
                &[Phase::Prefill, Phase::Decode],
                first,
                "generation_batch prompts at prompt + 64 positions, all layers (kv_cache.rs)",
            )
            .block((bg * (l + 64)) as f64 * kv_buffer),
        );
        // engine.rs: the arena, allocated once per rollout for min(slots, responses)
        // sequences of the longest prompt + max_new_tokens.
        let slots = s.slots;
        out.push(
            Term::new(
                "KV arena: rollout slots",
                &[Phase::Decode],
                (slots * (l + n)) as f64 * kv_position,
                format!("{slots} slots x {} positions, all layers, allocated once (kv_arena.rs)", l + n),
            )
            .block((slots * (l + n)) as f64 * kv_buffer),
        );
        out.push(
            Term::new(
                "prefill working set",
                &[Phase::Prefill],
                prefill_bytes(model, s, bg, l),
                "mask [B,1,L,L], rope, one layer (or the vision pass) without a graph",
            )
            .block(((bg * l * l) as f64 * b).max((bg * l) as f64 * widest)),
        );
        let top_p = c.rl.top_p < 1.0;
        // Grouped-query decode attention reads the arena's view; SDPA's CPU path may make
        // one layer's live keys and values contiguous.
        let read = (slots * (l + n)) as f64 * kv_buffer * 2.0;
        let sampling =
            slots as f64 * v * (sampling_bytes_per_entry(c.rl.temperature, top_p) + if s.bf16 { 2.0 } else { 0.0 });
        out.push(
            Term::new(
                "decode working set",
                &[Phase::Decode],
                read + sampling + (bg * l) as f64 * h * b,
                "one layer's live keys and values, sampling over [slots, vocab] (sampler.rs), prompt hidden states",
            )
            .block((slots as f64 * v * 4.0).max(read / 2.0)),
        );
        let (br, tok) = (s.score_rows, s.prompt + s.new_tokens);
        let fwd = forward_nograd_bytes(model, s, br, tok);
        let chunk = c.memory.logits_chunk_tokens.min(br * s.new_tokens);
        out.push(
            Term::new(
                "scoring forward (no graph)",
                &[Phase::Scoring],
                fwd,
                format!("{br} sequences of {tok} tokens (update.rs score)"),
            )
            .block(((br * tok * tok) as f64 * b).max((br * tok) as f64 * widest)),
        );
        out.push(
            Term::new(
                "logits chunk (forward)",
                &[Phase::Scoring],
                logits_chunk_bytes(chunk, t.vocab, b, false),
                format!("2 tensors of [{chunk}, vocab] fp32 (update.rs chunk_logp)"),
            )
            .block((chunk * t.vocab) as f64 * 4.0),
        );
        let phases = [Phase::UpdateHead, Phase::UpdateLayers, Phase::UpdateInput];
        out.extend(update_terms(c, model, s, s.update_rows, s.new_tokens, "RL update", &phases));
    }
    if c.sft.steps > 0 {
        let phases = [Phase::SftHead, Phase::SftLayers, Phase::SftInput];
        out.extend(update_terms(c, model, s, s.sft_rows, s.new_tokens, "SFT", &phases));
    }
    let largest = model.largest_trainable(freeze) as f64;
    let (opt, note) = if flat {
        (
            16.0 * unit / w + if mode == Sharding::Gradients { unit * b } else { 0.0 },
            format!(
                "the norm's f64 square of the largest unit's shard{} (fsdp.rs optimizer_step)",
                if mode == Sharding::Gradients { ", then its gathered weights" } else { "" }
            ),
        )
    } else if shard > 1.0 {
        (
            4.0 * (c.distributed.bucket_mb << 20) as f64,
            "flat gradient, weight and gathered buckets (sharded.rs step)".to_string(),
        )
    } else {
        let adam = 12.0 + if s.bf16 { 4.0 } else { 0.0 };
        (
            16.0f64.max(adam) * largest,
            format!(
                "gradient norm's f64 copy and square of the largest tensor ({} elements; optim.rs)",
                largest as i64
            ),
        )
    };
    let opt_block = if flat {
        8.0 * unit / w
    } else if shard > 1.0 {
        (c.distributed.bucket_mb << 20) as f64
    } else {
        8.0 * largest
    };
    out.push(Term::new("optimizer step temporaries", &[Phase::Optimizer], opt, note).block(opt_block));
    if flat {
        // checkpoint_shards.rs: a unit's fp32 masters or moments gathered on its writer
        // at a time; the writer's share of the file on the host.
        let host = if cpu { 12.0 * trainable / w } else { 0.0 };
        out.push(
            Term::new(
                "checkpoint share",
                &[Phase::Checkpoint],
                unit * 4.0 + host,
                "one unit gathered on its writer (fsdp.rs checkpoint_share), this rank's files on the host",
            )
            .block(unit * 4.0),
        );
    }
    if main && mode == Sharding::Optimizer {
        out.push(
            Term::new(
                "full moments on rank 0",
                &[Phase::Checkpoint],
                2.0 * trainable * 4.0,
                "sharded.rs state_tensors assembles them for the file",
            )
            .block(largest * 4.0),
        );
    }
    if cpu {
        let largest_any = (t.vocab * t.hidden).max(model.largest_trainable(&[])) as f64;
        out.push(
            Term::new(
                "safetensors copy (host)",
                &[Phase::Checkpoint],
                largest_any * 4.0,
                "the largest tensor's bytes while it is written",
            )
            .block(largest_any * 4.0),
        );
    }
    if c.validation.every > 0 {
        let (rows, l, n) = (s.val_rows, s.prompt, s.val_new_tokens);
        // validation.rs: batch_size slots of one response each, and one prefill's cache.
        let cache = (rows * (l + n) + rows * (l + 64)) as f64 * kv_position;
        let sampling = rows as f64 * v * sampling_bytes_per_entry(c.validation.temperature, c.rl.top_p < 1.0);
        let work = prefill_bytes(model, s, rows, l).max(sampling);
        out.push(
            Term::new(
                "validation generation",
                &[Phase::Validation],
                cache + work,
                format!("{rows} rows x {n} new tokens, G = 1: KV cache and working set"),
            )
            .block((rows as f64 * v * 4.0).max(rows as f64 * 2.0 * (l + n) as f64 * kv_buffer)),
        );
    }
    out
}

/// What one gathered unit costs during an update's forward and backward under flat
/// sharding: its parameters ("full"), its whole gradients and the reduce-scatter's flat
/// copy (fsdp.rs gather_group / reduce_group).
fn gathered_unit_term(mode: Sharding, unit: f64, b: f64, rb: f64) -> Term {
    let phases =
        [Phase::SftHead, Phase::SftLayers, Phase::SftInput, Phase::UpdateHead, Phase::UpdateLayers, Phase::UpdateInput];
    match mode {
        Sharding::Full => Term::new(
            "gathered layers",
            &phases,
            unit * (2.0 * b + rb),
            format!(
                "the largest unit ({unit} elements): parameters and gradients x {b} B, reduce-scatter input x {rb} B"
            ),
        )
        .block(unit * b),
        Sharding::Gradients => Term::new(
            "gathered layers",
            &phases,
            unit * (b + rb),
            format!("the largest unit's whole gradients x {b} B and reduce-scatter input x {rb} B ({unit} elements)"),
        )
        .block(unit * b),
        _ => Term::new("gathered layers", &[], 0.0, "no parameter sharding"),
    }
}

/// The forward of `rows` prompts of `l` tokens without a graph: mask, rope tables, hidden
/// states, and the larger of one decoder layer's and the vision tower's working set.
fn prefill_bytes(model: &ModelShape, s: &Sizes, rows: i64, l: i64) -> f64 {
    forward_nograd_bytes(model, s, rows, l)
}

fn forward_nograd_bytes(model: &ModelShape, s: &Sizes, rows: i64, l: i64) -> f64 {
    let t = &model.text;
    let b = s.b;
    let tokens = (rows * l) as f64;
    let mask = rows as f64 * (l * l) as f64 * b;
    let rope = 2.0 * tokens * t.head_dim as f64 * (b + 4.0);
    let hidden = 2.0 * tokens * t.hidden as f64 * b;
    let layer = tokens * layer_nograd_bytes(t, b);
    let vision = vision_nograd_bytes(&model.vision, b, rows, s.patches);
    mask + rope + hidden + layer.max(vision)
}

/// The terms of a micro-batch's forward and backward (`update.rs` forward_for_update and
/// UpdateForward::backward) for `rows` sequences of prompt + `new_tokens` tokens.
fn update_terms(
    c: &TrainConfig,
    model: &ModelShape,
    s: &Sizes,
    rows: i64,
    new_tokens: i64,
    what: &str,
    phases: &[Phase; 3],
) -> Vec<Term> {
    let t = &model.text;
    let b = s.b;
    let [head, layers, input] = *phases;
    let seq = s.prompt + new_tokens;
    let tokens = (rows * seq) as f64;
    let (h, v, i) = (t.hidden as f64, t.vocab as f64, t.intermediate as f64);
    let freeze = &c.model.freeze;
    let llm_trains = !freeze.contains(&ModuleGroup::Llm);
    let tower = !freeze.contains(&ModuleGroup::VisionTower);
    let mergers = !freeze.contains(&ModuleGroup::Merger);
    let chunk = c.memory.logits_chunk_tokens.min(rows * new_tokens);
    let layer_acts = tokens * layer_activation_bytes(t, b);
    let vision = vision_activation_bytes(&model.vision, model.family, b, s.patches, tower, mergers, c.memory.recompute)
        * rows as f64;
    let head_weight = if llm_trains { v * h * b } else { 0.0 };
    let widest = tokens * (t.intermediate.max(t.heads * t.head_dim).max(t.hidden)) as f64 * b;
    let v_ = &model.vision;
    let vision_block = (rows * s.patches) as f64 * (3 * v_.hidden).max(v_.intermediate) as f64 * b;
    let vision_block = vision_block.max((v_.heads * s.patches * s.patches) as f64 * 4.0);
    let mut out = vec![Term::new(
        format!("{what}: mask and rope tables"),
        phases,
        rows as f64 * (seq * seq) as f64 * b + 2.0 * tokens * t.head_dim as f64 * b,
        format!("[{rows}, 1, {seq}, {seq}] additive mask, cos / sin (update.rs rope_and_mask)"),
    )
    .block(rows as f64 * (seq * seq) as f64 * b)];
    out.push(
        Term::new(
            format!("{what}: logits chunk (backward)"),
            &[head],
            logits_chunk_bytes(chunk, t.vocab, b, true),
            format!("4 x [{chunk}, vocab] fp32 (update.rs head_backward)"),
        )
        .block((chunk * t.vocab) as f64 * 4.0),
    );
    out.push(
        Term::new(
            format!("{what}: head gradient, final norm"),
            &[head],
            head_weight + 3.0 * tokens * h * 4.0,
            "the head weight's gradient before accumulation, the final norm's graph",
        )
        .block(head_weight.max(tokens * h * 4.0)),
    );
    // Backward of one layer: y and the incoming gradient, gradients of the MLP's and
    // attention's tensors (about three [tokens, intermediate] at once), weight gradients.
    let backward = tokens * (2.0 * h + 3.0 * i) * b + model.layer_params() as f64 * b;
    if c.memory.recompute {
        out.push(
            Term::new(
                format!("{what}: layer inputs (recompute)"),
                &[head, layers],
                (t.layers + 1) as f64 * tokens * h * b,
                format!("{} x [{rows}, {seq}, {}] (each layer's input and the last output)", t.layers + 1, t.hidden),
            )
            .block(tokens * h * b),
        );
        out.push(
            Term::new(
                format!("{what}: one layer recomputed + backward"),
                &[layers],
                layer_acts + backward,
                format!(
                    "{:.0} B per token kept by a layer (attention.rs, decoder.rs), its gradients",
                    layer_activation_bytes(t, b)
                ),
            )
            .block(widest),
        );
        out.push(
            Term::new(
                format!("{what}: input stage, block by block"),
                &[input],
                vision + 3.0 * tokens * h * b + head_weight,
                "each vision block's input, one block recomputed with its graph, mergers, embeddings, the embedding's dense gradient",
            )
            .block(vision_block.max(head_weight)),
        );
    } else {
        out.push(
            Term::new(
                format!("{what}: every layer's activations"),
                phases,
                t.layers as f64 * layer_acts + vision + 2.0 * tokens * h * b,
                "memory.recompute = false: the whole forward's graph, vision tower included",
            )
            .block(widest.max(vision_block)),
        );
        out.push(
            Term::new(
                format!("{what}: layer backward"),
                &[layers, input],
                backward + head_weight,
                "gradients of one layer's tensors and weights",
            )
            .block(widest.max(head_weight)),
        );
    }
    out
}
