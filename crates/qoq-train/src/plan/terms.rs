//! The terms of the plan: the batch sizes a rank sees, and the bytes each allocation takes,
//! each modelled on the code named beside it. Byte counts are per rank.

use qoq_policy::{Family, ModuleGroup};

use super::shape::{ModelShape, TextShape, VisionShape};
use super::{Phase, Term};
use crate::config::{DeviceConfig, Dtype, TrainConfig};

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
    /// Prompts per generate call and the rows they decode (x G).
    pub gen_prompts: i64,
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
            score_rows: (rl.micro_batch as i64).min(step_prompts * g),
            update_rows: (rl.micro_batch as i64).min(update_share),
            sft_rows: (c.sft.micro_batch as i64).min((c.sft.batch_size as i64 / w).max(1)),
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
                "generate {} prompts x G {} = {} rows of {} prompt + {} new tokens; micro-batches of {} (scoring), {} (RL update)",
                self.gen_prompts, self.g, self.gen_rows, self.prompt, self.new_tokens, self.score_rows, self.update_rows
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

/// Bytes one decoder layer keeps for its backward, per token (`layers/decoder.rs`,
/// `layers/attention.rs`, `layers/rms_norm.rs`): each RMSNorm its normalised fp32 rows and
/// output (in bf16 also the fp32 copy of its input and the cast), q / k / v and their
/// rotations, the repeated kv heads (GQA), SDPA's output and its reshape, the MLP's gate,
/// SiLU, up and product. SDPA keeps no `[heads, S, S]` scores: libtorch's flash kernels
/// (CPU, measured; CUDA's memory-efficient kernel for an additive mask) keep the output
/// and a log-sum-exp per head.
pub fn layer_activation_bytes(t: &TextShape, b: f64) -> f64 {
    let (h, q, kv, i) =
        ((t.hidden) as f64, (t.heads * t.head_dim) as f64, (t.kv_heads * t.head_dim) as f64, t.intermediate as f64);
    let norm_in = h * if b == 4.0 { 8.0 } else { 12.0 };
    let qk = if t.qk_norm { (q + kv) * 12.0 } else { (q + kv) * b };
    let repeat = if t.heads != t.kv_heads { 2.0 * q } else { 0.0 };
    let rest = b * (kv + 2.0 * q + 2.0 * kv + repeat + 2.0 * q + 4.0 * i);
    norm_in + qk + h * 12.0 + rest + 4.0 * t.heads as f64
}

/// Bytes of one decoder layer's forward without a graph, per token: the larger of the
/// attention half (norm, q/k/v, rotations, repeated kv, SDPA output) and the MLP half
/// (gate, SiLU, up, product, down and the residual), all alive within one statement.
pub fn layer_nograd_bytes(t: &TextShape, b: f64) -> f64 {
    let (h, q, kv, i) =
        ((t.hidden) as f64, (t.heads * t.head_dim) as f64, (t.kv_heads * t.head_dim) as f64, t.intermediate as f64);
    b * (h + 7.0 * q + 4.0 * kv).max(3.0 * h + 4.0 * i)
}

/// Bytes per patch that the vision tower and mergers keep for the backward (`qwen3_vl/
/// vision.rs`: LayerNorm blocks with a GELU MLP, 12C + 2I; `qwen2_5_vl/vision.rs`: RMSNorm
/// blocks with SwiGLU, 14C + 4I), plus each merger's norm, fc1 and GELU (3C per patch),
/// plus the attention probabilities of each image (`layers/vision_attention.rs` computes
/// `[heads, n, n]` fp32 softmax per image or window, kept for the backward). `tower` /
/// `mergers`: whether those groups train (a frozen group keeps nothing).
pub fn vision_activation_bytes(
    v: &VisionShape,
    family: Family,
    b: f64,
    patches: i64,
    tower: bool,
    mergers: bool,
) -> f64 {
    let (c, i, n) = (v.hidden as f64, v.intermediate as f64, patches as f64);
    let mut per_patch = 0.0;
    let mut per_image = 0.0;
    if tower {
        let block = match family {
            Family::Qwen3Vl => 12.0 * c + 2.0 * i,
            Family::Qwen25Vl => 14.0 * c + 4.0 * i,
        };
        let pixels = (v.in_channels * v.temporal_patch * v.patch * v.patch) as f64;
        per_patch += b * (v.depth as f64 * block + 2.0 * c) + 4.0 * pixels;
        let prob = 4.0 + if b == 4.0 { 0.0 } else { b };
        let heads = v.heads as f64;
        let full = (v.full_blocks as f64) * heads * n * n * prob;
        let windowed = if v.window_patches > 0 {
            ((v.depth - v.full_blocks) as f64) * heads * n * (v.window_patches as f64).min(n) * prob
        } else {
            0.0
        };
        per_image += full + windowed;
    }
    if mergers || tower {
        per_patch += b * 3.0 * c * (1 + v.deepstack) as f64;
    }
    per_patch * n + per_image
}

/// Bytes of the vision tower's forward without a graph for one batch: a block's tensors for
/// every patch, and one image's scores, scaled scores and softmax at a time.
pub fn vision_nograd_bytes(v: &VisionShape, b: f64, images: i64, patches: i64) -> f64 {
    let (c, i, n) = (v.hidden as f64, v.intermediate as f64, patches as f64);
    b * (10.0 * c + 2.0 * i) * n * images as f64 + 3.0 * 4.0 * v.heads as f64 * n * n
}

/// Bytes of `[chunk, vocab]` fp32 tensors alive at once in a logits chunk (`update.rs`
/// chunk_logp): forward with the entropy: the tempered logits, the log-softmax, its exp and
/// their product; backward: the saved log-softmax, the gather's gradient, the
/// log-softmax's input gradient and the temperature's. A bf16 head adds its bf16 output.
pub fn logits_chunk_bytes(chunk: i64, vocab: i64, b: f64) -> f64 {
    let elems = (chunk * vocab) as f64;
    elems * (4.0 * 4.0 + if b == 4.0 { 0.0 } else { b })
}

/// What glibc's heap holds beyond the live logits chunks on CPU, under `train`'s allocator
/// settings (freed memory kept): a freed `[chunk, vocab]` block cannot take a new 64-byte
/// aligned block of its own size (posix_memalign asks for size + alignment + 32 bytes),
/// and each chunk leaves small live tensors between its blocks, so the 4 forward and 4
/// backward blocks of every chunk of a micro-batch's head land at distinct addresses
/// (measured: 8.2 blocks held for one chunk, 14.7 for two; docs/memory.md). The live 4 of
/// the backward are counted by [`logits_chunk_bytes`].
pub fn cpu_heap_head_bytes(chunk: i64, chunks: i64, vocab: i64) -> f64 {
    (8 * chunks - 4).max(0) as f64 * (chunk * vocab) as f64 * 4.0
}

/// Bytes of the generation KV cache at its peak (`layers/kv_cache.rs`): the prompt pass
/// fills `prompt_rows` rows at capacity `prompt + 64` (kept alive, `generate.rs`), the G
/// samples' copy (`rows`) grows by doubling, capacity max(needed, 2 x capacity, needed + 64),
/// to hold `prompt + new_tokens - 1` positions (the last token is never fed back); while a
/// layer grows, its old and new buffers are both alive (one buffer at a time).
/// `per_position`: bytes of one row's keys and values at one position in every layer.
pub fn kv_cache_bytes(
    rows: i64,
    prompt_rows: i64,
    prompt: i64,
    new_tokens: i64,
    layers: i64,
    per_position: f64,
) -> f64 {
    let first = prompt + 64;
    let needed = prompt + new_tokens - 1;
    let (mut capacity, mut previous) = (first, 0);
    while capacity < needed {
        previous = capacity;
        capacity = (capacity + 1).max(2 * capacity).max(capacity + 65);
    }
    let per_buffer = per_position / (2 * layers.max(1)) as f64;
    (prompt_rows * first) as f64 * per_position
        + (rows * capacity) as f64 * per_position
        + (rows * previous) as f64 * per_buffer
}

/// Bytes per row and vocabulary entry of a decode step's sampling (`generate.rs`
/// warp_logits, sample_inverse_cdf): the logits, the warped copy, top-p's sort (values and
/// int64 order), softmax, cumsum and masks; afterwards log-softmax, exp and the CDF.
pub fn sampling_bytes_per_entry(temperature: f64, top_p: bool) -> f64 {
    if temperature <= 0.0 {
        12.0
    } else if top_p {
        30.0
    } else {
        21.0
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
    let shard = if c.distributed.sharded_optimizer && s.world > 1 { w } else { 1.0 };
    let dtype = if s.bf16 { "bfloat16" } else { "float32" };
    let cpu = c.run.device == DeviceConfig::Cpu;
    let (h, v) = (t.hidden as f64, t.vocab as f64);
    let d = t.head_dim as f64;
    let mut out = vec![
        Term::new(
            "parameters",
            &[],
            total * b,
            format!("{} x {b} B ({dtype}); every variable of the family's model.rs", counts.total()),
        ),
        if s.bf16 {
            Term::new(
                "fp32 master weights",
                &[],
                trainable * 4.0 / shard,
                "trainable x 4 B (/N with distributed.sharded_optimizer)",
            )
        } else {
            Term::new("fp32 master weights", &[], 0.0, "none: float32 weights are their own master")
        },
        Term::new(
            "AdamW moments",
            &[],
            2.0 * trainable * 4.0 / shard,
            "2 x trainable x 4 B (optim.rs AdamW::new; /N: sharded.rs)",
        ),
        Term::new(
            "gradients",
            &[],
            trainable * b + if s.bf16 { trainable * 4.0 } else { 0.0 },
            format!(
                "trainable x {b} B{}: every .grad exists from the optimizer's start (parallel.rs materialize_grads)",
                if s.bf16 { " + fp32 accumulation" } else { "" }
            ),
        ),
        Term::new(
            "reference model",
            &[],
            if c.algorithm.needs_reference() && c.rl.steps > 0 { total * b } else { 0.0 },
            "a second copy when kl_coef != 0 or DRPO kl_damping (trainer.rs Trainer::new)",
        ),
        Term::new("gathered layers", &[], 0.0, "no parameter sharding"),
        Term::new("gathered model for rollouts", &[], 0.0, "no parameter sharding"),
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
    if c.rl.steps > 0 {
        let (bg, rows, l, n) = (s.gen_prompts, s.gen_rows, s.prompt, s.new_tokens);
        let first = (bg * (l + 64)) as f64 * kv_position;
        out.push(Term::new(
            "KV cache: prompts",
            &[Phase::Prefill, Phase::Decode],
            first,
            "generation_batch prompts at prompt + 64 positions, all layers (kv_cache.rs)",
        ));
        let grown = kv_cache_bytes(rows, 0, l, n, t.layers, kv_position);
        out.push(Term::new(
            "KV cache: G samples, growing",
            &[Phase::Decode],
            grown,
            format!(
                "{rows} rows, capacity doubling to hold {} positions, one buffer old + new (kv_cache.rs)",
                l + n - 1
            ),
        ));
        out.push(Term::new(
            "prefill working set",
            &[Phase::Prefill],
            prefill_bytes(model, s, bg, l),
            "mask [B,1,L,L], rope, one layer (or the vision pass) without a graph",
        ));
        let top_p = c.rl.top_p < 1.0;
        let repeat = if t.heads != t.kv_heads { 2.0 * (rows * t.heads * (l + n)) as f64 * d * b } else { 0.0 };
        let sampling = rows as f64 * v * sampling_bytes_per_entry(c.rl.temperature, top_p);
        out.push(Term::new(
            "decode working set",
            &[Phase::Decode],
            repeat + sampling + (bg * l) as f64 * h * b,
            "a layer's repeated kv heads at full length, sampling over [rows, vocab] (generate.rs), prompt hidden states",
        ));
        let (br, tok) = (s.score_rows, s.prompt + s.new_tokens);
        let fwd = forward_nograd_bytes(model, s, br, tok);
        let chunk = c.memory.logits_chunk_tokens.min(br * s.new_tokens);
        out.push(Term::new(
            "scoring forward (no graph)",
            &[Phase::Scoring],
            fwd,
            format!("{br} sequences of {tok} tokens (update.rs score)"),
        ));
        out.push(Term::new(
            "logits chunk (forward)",
            &[Phase::Scoring],
            logits_chunk_bytes(chunk, t.vocab, b),
            format!("4 tensors of [{chunk}, vocab] fp32 (update.rs chunk_logp)"),
        ));
        if cpu {
            let chunks = (br * s.new_tokens + chunk - 1) / chunk.max(1);
            out.push(Term::new(
                "scoring: CPU heap, head blocks",
                &[Phase::Scoring],
                (4 * chunks - 4).max(0) as f64 * (chunk * t.vocab) as f64 * 4.0,
                format!("glibc keeps the {} [{chunk}, vocab] blocks of a micro-batch's chunks apart", 4 * chunks),
            ));
        }
        let phases = [Phase::UpdateHead, Phase::UpdateLayers, Phase::UpdateInput];
        out.extend(update_terms(c, model, s, s.update_rows, s.new_tokens, "RL update", &phases));
    }
    if c.sft.steps > 0 {
        let phases = [Phase::SftHead, Phase::SftLayers, Phase::SftInput];
        out.extend(update_terms(c, model, s, s.sft_rows, s.new_tokens, "SFT", &phases));
    }
    let largest = model.largest_trainable(freeze) as f64;
    let (opt, note) = if shard > 1.0 {
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
    out.push(Term::new("optimizer step temporaries", &[Phase::Optimizer], opt, note));
    if main && shard > 1.0 {
        out.push(Term::new(
            "full moments on rank 0",
            &[Phase::Checkpoint],
            2.0 * trainable * 4.0,
            "sharded.rs state_tensors assembles them for the file",
        ));
    }
    if cpu {
        let largest_any = (t.vocab * t.hidden).max(model.largest_trainable(&[])) as f64;
        out.push(Term::new(
            "safetensors copy (host)",
            &[Phase::Checkpoint],
            largest_any * 4.0,
            "the largest tensor's bytes while it is written",
        ));
    }
    if c.validation.every > 0 {
        let (rows, l, n) = (s.val_rows, s.prompt, s.val_new_tokens);
        let cache = kv_cache_bytes(rows, rows, l, n, t.layers, kv_position);
        let sampling = rows as f64 * v * sampling_bytes_per_entry(c.validation.temperature, c.rl.top_p < 1.0);
        let work = prefill_bytes(model, s, rows, l).max(sampling);
        out.push(Term::new(
            "validation generation",
            &[Phase::Validation],
            cache + work,
            format!("{rows} rows x {n} new tokens, G = 1: KV cache and working set"),
        ));
    }
    out
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
    let vision = vision_activation_bytes(&model.vision, model.family, b, s.patches, tower, mergers) * rows as f64;
    let head_weight = if llm_trains { v * h * b } else { 0.0 };
    let mut out = vec![Term::new(
        format!("{what}: mask and rope tables"),
        phases,
        rows as f64 * (seq * seq) as f64 * b + 2.0 * tokens * t.head_dim as f64 * b,
        format!("[{rows}, 1, {seq}, {seq}] additive mask, cos / sin (update.rs rope_and_mask)"),
    )];
    out.push(Term::new(
        format!("{what}: logits chunk (backward)"),
        &[head],
        logits_chunk_bytes(chunk, t.vocab, b) + head_weight + 3.0 * tokens * h * 4.0,
        format!("4 x [{chunk}, vocab] fp32, the head weight's gradient, the final norm (update.rs head_backward)"),
    ));
    if c.run.device == DeviceConfig::Cpu {
        let chunks = (rows * new_tokens + chunk - 1) / chunk.max(1);
        out.push(Term::new(
            format!("{what}: CPU heap, head blocks"),
            &[head],
            cpu_heap_head_bytes(chunk, chunks, t.vocab),
            format!(
                "glibc keeps the {} [{chunk}, vocab] blocks of a micro-batch's head apart (docs/memory.md)",
                8 * chunks
            ),
        ));
    }
    // Backward of one layer: y and the incoming gradient, gradients of the MLP's and
    // attention's tensors (about three [tokens, intermediate] at once), weight gradients.
    let backward = tokens * (2.0 * h + 3.0 * i) * b + model.layer_params() as f64 * b;
    if c.memory.recompute {
        out.push(Term::new(
            format!("{what}: layer inputs (recompute)"),
            &[head, layers],
            (t.layers + 1) as f64 * tokens * h * b,
            format!("{} x [{rows}, {seq}, {}] (each layer's input and the last output)", t.layers + 1, t.hidden),
        ));
        out.push(Term::new(
            format!("{what}: one layer recomputed + backward"),
            &[layers],
            layer_acts + backward,
            format!(
                "{:.0} B per token kept by a layer (attention.rs, decoder.rs), its gradients",
                layer_activation_bytes(t, b)
            ),
        ));
        out.push(Term::new(
            format!("{what}: input stage with graph"),
            &[input],
            vision + 3.0 * tokens * h * b + head_weight,
            "vision tower and mergers for each row's image, embeddings, the embedding's dense gradient",
        ));
    } else {
        out.push(Term::new(
            format!("{what}: every layer's activations"),
            phases,
            t.layers as f64 * layer_acts + vision + 2.0 * tokens * h * b,
            "memory.recompute = false: the whole forward's graph, vision tower included",
        ));
        out.push(Term::new(
            format!("{what}: layer backward"),
            &[layers, input],
            backward + head_weight,
            "gradients of one layer's tensors and weights",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_cache_doubles_and_counts_one_old_buffer() {
        // 1 row, prompt 100: capacity 164, then 328 once 165 positions are needed.
        let per = 8.0; // bytes per position over 2 layers x (K, V): 2 bytes per buffer
        assert_eq!(kv_cache_bytes(1, 0, 100, 60, 2, per), 164.0 * 8.0);
        assert_eq!(kv_cache_bytes(1, 0, 100, 66, 2, per), 328.0 * 8.0 + 164.0 * 2.0);
        assert_eq!(kv_cache_bytes(1, 0, 100, 400, 2, per), 656.0 * 8.0 + 328.0 * 2.0);
        // The prompts' own cache is added at prompt + 64.
        assert_eq!(kv_cache_bytes(0, 3, 100, 400, 2, per), 3.0 * 164.0 * 8.0);
    }

    #[test]
    fn activations_per_token_follow_the_layer() {
        let t = TextShape {
            vocab: 10,
            hidden: 4,
            intermediate: 8,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            tied: true,
            qkv_bias: false,
            o_bias: false,
            qk_norm: true,
        };
        // fp32: 5h + 9q + 6kv + 4i floats plus a log-sum-exp per head.
        assert_eq!(layer_activation_bytes(&t, 4.0), 4.0 * (5.0 * 4.0 + 9.0 * 4.0 + 6.0 * 2.0 + 4.0 * 8.0) + 8.0);
        let mha = TextShape { kv_heads: 2, qk_norm: false, ..t };
        // No repeat, no q/k norm: 5h + 5q + 4kv + 4i.
        assert_eq!(layer_activation_bytes(&mha, 4.0), 4.0 * (5.0 * 4.0 + 5.0 * 4.0 + 4.0 * 4.0 + 4.0 * 8.0) + 8.0);
    }

    #[test]
    fn logits_chunks_and_sampling() {
        assert_eq!(logits_chunk_bytes(512, 151_936, 4.0), 512.0 * 151_936.0 * 16.0);
        assert_eq!(logits_chunk_bytes(1, 10, 2.0), 10.0 * 18.0);
        assert!(sampling_bytes_per_entry(0.0, true) < sampling_bytes_per_entry(1.0, false));
        assert!(sampling_bytes_per_entry(1.0, false) < sampling_bytes_per_entry(1.0, true));
    }
}
