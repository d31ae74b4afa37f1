//! Causal self-attention of the Qwen text decoders: grouped KV heads, optional per-head
//! q/k RMSNorm before the rope (Qwen3), optional q/k/v bias (Qwen2), SDPA.

use tch::nn::{self, Module};
use tch::Tensor;

use super::kv_arena::SlotView;
use super::kv_cache::LayerCache;
use super::rms_norm::RmsNorm;
use super::rope::apply_rotary;
use super::DecoderConfig;

#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    /// Qwen3's per-head norms; absent in Qwen2.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Variables under `p` (= `...layers.N.self_attn`).
    pub fn new(p: nn::Path, c: &DecoderConfig) -> Self {
        let lin = |name: &str, i: i64, o: i64, bias: bool| {
            nn::linear(&p / name, i, o, nn::LinearConfig { bias, ..Default::default() })
        };
        let (h, kv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        Self {
            q_proj: lin("q_proj", c.hidden_size, h * d, c.qkv_bias),
            k_proj: lin("k_proj", c.hidden_size, kv * d, c.qkv_bias),
            v_proj: lin("v_proj", c.hidden_size, kv * d, c.qkv_bias),
            o_proj: lin("o_proj", h * d, c.hidden_size, c.o_bias),
            q_norm: c.qk_norm.then(|| RmsNorm::new(&p / "q_norm", d, c.rms_norm_eps)),
            k_norm: c.qk_norm.then(|| RmsNorm::new(&p / "k_norm", d, c.rms_norm_eps)),
            heads: h,
            kv_heads: kv,
            head_dim: d,
        }
    }

    /// `x` [B, L, hidden]; `mask` additive [B, 1, L, T_total]; cos/sin [B, L, head_dim].
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: &mut LayerCache) -> Tensor {
        let (q, k, v) = self.project(x, cos, sin);
        let (k, v) = cache.append(&k, &v);
        let groups = self.heads / self.kv_heads;
        let k = repeat_kv(&k, groups);
        let v = repeat_kv(&v, groups);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, self.scale(), false);
        self.output(&out)
    }

    /// One decode token per slot of the engine's arena: `x` [n, 1, hidden] for slots
    /// `0..n`, whose keys and values are written at `write` and read back through `n`'s
    /// filled lengths; `mask` additive [n, 1, 1, T]. The grouped heads attend as one
    /// query block per KV head, so the cache is never repeated per head.
    pub fn forward_slots(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, slots: SlotView<'_>) -> Tensor {
        let (q, k, v) = self.project(x, cos, sin);
        let (k, v) = slots.write(&k, &v);
        let n = q.size()[0];
        let groups = self.heads / self.kv_heads;
        let q = q.reshape([n, self.kv_heads, groups, self.head_dim]);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, self.scale(), false);
        self.output(&out.reshape([n, self.heads, 1, self.head_dim]))
    }

    /// q [B, H, L, D], k and v [B, kv, L, D], normed (Qwen3) and rotated.
    fn project(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, l) = (x.size()[0], x.size()[1]);
        let norm = |n: &Option<RmsNorm>, t: Tensor| match n {
            Some(n) => n.forward(&t),
            None => t,
        };
        let q = norm(&self.q_norm, self.q_proj.forward(x).view([b, l, self.heads, self.head_dim])).transpose(1, 2);
        let k = norm(&self.k_norm, self.k_proj.forward(x).view([b, l, self.kv_heads, self.head_dim])).transpose(1, 2);
        let v = self.v_proj.forward(x).view([b, l, self.kv_heads, self.head_dim]).transpose(1, 2);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        (apply_rotary(&q, &cos, &sin), apply_rotary(&k, &cos, &sin), v)
    }

    /// (KV heads, head dim): the shape of one token's cached keys.
    pub fn kv_layout(&self) -> (i64, i64) {
        (self.kv_heads, self.head_dim)
    }

    fn scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }

    /// Attention output [B, H, L, D] -> [B, L, hidden].
    fn output(&self, out: &Tensor) -> Tensor {
        let (b, l) = (out.size()[0], out.size()[2]);
        self.o_proj.forward(&out.transpose(1, 2).reshape([b, l, self.heads * self.head_dim]))
    }
}

/// `[B, kv, T, D]` -> `[B, kv * n, T, D]`, each kv head repeated `n` times in place.
fn repeat_kv(x: &Tensor, n: i64) -> Tensor {
    if n == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2).expand([s[0], s[1], n, s[2], s[3]], false).reshape([s[0], s[1] * n, s[2], s[3]])
}
