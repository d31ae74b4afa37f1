//! The byte counts of the allocations the plan counts, each modelled on the code named in
//! its doc (`qoq-policy`'s layers, generation and update), in bytes.

use qoq_policy::Family;

use super::shape::{TextShape, VisionShape};

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
    by_block: bool,
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
        let prob = 4.0 + if b == 4.0 { 0.0 } else { b };
        let heads = v.heads as f64;
        let (full_one, window_one) = (
            heads * n * n * prob,
            if v.window_patches > 0 { heads * n * (v.window_patches as f64).min(n) * prob } else { 0.0 },
        );
        if by_block {
            // vision_recompute.rs: every block's input kept, one block's graph at a time.
            per_patch += b * (v.depth as f64 * c + block + 2.0 * c) + 4.0 * pixels;
            per_image += if v.full_blocks > 0 { full_one } else { window_one };
        } else {
            per_patch += b * (v.depth as f64 * block + 2.0 * c) + 4.0 * pixels;
            per_image += (v.full_blocks as f64) * full_one + ((v.depth - v.full_blocks) as f64) * window_one;
        }
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

/// Bytes of `[chunk, vocab]` tensors alive at once in a logits chunk (`update.rs`
/// chunk_logp, temperature and entropy in place): the forward holds the logits and the
/// log-softmax (then the log-softmax and its exp for the entropy): 2 fp32 tensors; the
/// backward also their gradients: 4. A bf16 head adds its bf16 output before the cast.
pub fn logits_chunk_bytes(chunk: i64, vocab: i64, b: f64, backward: bool) -> f64 {
    let tensors = if backward { 4.0 } else { 2.0 };
    (chunk * vocab) as f64 * (tensors * 4.0 + if b == 4.0 { 0.0 } else { b })
}

/// Bytes per row and vocabulary entry of a decode step's sampling (`sampler.rs` draw):
/// the f32 logits, the banned / temperature-scaled copy and, for top-p, the exponentials
/// of its f64-accumulated normaliser (the candidates are a few thousand entries at most);
/// without truncation the log-softmax, its exponentials and the f64 CDF.
pub fn sampling_bytes_per_entry(temperature: f64, top_p: bool) -> f64 {
    if temperature <= 0.0 {
        12.0
    } else if top_p {
        16.0
    } else {
        24.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(logits_chunk_bytes(128, 151_936, 4.0, true), 128.0 * 151_936.0 * 16.0);
        assert_eq!(logits_chunk_bytes(128, 151_936, 4.0, false), 128.0 * 151_936.0 * 8.0);
        assert_eq!(logits_chunk_bytes(1, 10, 2.0, true), 10.0 * 18.0);
        // Greedy < top-p's candidates < the untruncated path's log-softmax and f64 CDF.
        assert!(sampling_bytes_per_entry(0.0, true) < sampling_bytes_per_entry(1.0, true));
        assert!(sampling_bytes_per_entry(1.0, true) < sampling_bytes_per_entry(1.0, false));
    }
}
