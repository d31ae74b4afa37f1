//! The Qwen3 text decoder (`model.language_model.*`): RMSNorm, attention with per-head
//! q/k norms before the rope and grouped KV heads, SwiGLU MLP, and a KV cache for decoding.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::TextConfig;
use crate::rope::apply_rotary;

/// `weight * (x.f32 * rsqrt(mean(x.f32^2) + eps)).to(dtype)`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: p.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (xf * (variance + self.eps).rsqrt()).to_kind(x.kind())
    }
}

/// One layer's cached keys and values: buffers `[B, kv_heads, capacity, head_dim]` of
/// which the first `len` positions are filled. Capacity doubles when full, so appending a
/// token costs amortised O(1) copies instead of re-concatenating the whole cache.
#[derive(Debug, Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: i64,
}

impl LayerCache {
    /// Append `k`, `v` `[B, kv, l, D]`; returns the filled keys and values.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let l = k.size()[2];
        let needed = self.len + l;
        if k.requires_grad() || v.requires_grad() {
            // With autograd on (scoring for the policy gradient) the graph must see the
            // keys: concatenate instead of copying into the buffer in place.
            let join = |old: &Option<Tensor>, new: &Tensor| match old {
                Some(old) => Tensor::cat(&[&old.narrow(2, 0, self.len), new], 2),
                None => new.shallow_clone(),
            };
            let (keys, values) = (join(&self.keys, k), join(&self.values, v));
            self.keys = Some(keys.shallow_clone());
            self.values = Some(values.shallow_clone());
            self.len = needed;
            return (keys, values);
        }
        let capacity = self.keys.as_ref().map_or(0, |t| t.size()[2]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(needed + 64);
            let grow = |old: &Option<Tensor>, like: &Tensor| {
                let mut shape = like.size();
                shape[2] = new_capacity;
                let buffer = Tensor::zeros(shape.as_slice(), (like.kind(), like.device()));
                if let Some(old) = old {
                    buffer.narrow(2, 0, self.len).copy_(&old.narrow(2, 0, self.len));
                }
                buffer
            };
            self.keys = Some(grow(&self.keys, k));
            self.values = Some(grow(&self.values, v));
        }
        let (keys, values) = (self.keys.as_ref().expect("allocated above"), self.values.as_ref().expect("allocated above"));
        keys.narrow(2, self.len, l).copy_(k);
        values.narrow(2, self.len, l).copy_(v);
        self.len = needed;
        (keys.narrow(2, 0, needed), values.narrow(2, 0, needed))
    }

    /// Rows `index` of the cache (for G samples per prompt).
    pub fn select_rows(&self, index: &Tensor) -> LayerCache {
        let pick = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(0, index));
        LayerCache { keys: pick(&self.keys), values: pick(&self.values), len: self.len }
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &TextConfig) -> Self {
        let lin = |name: &str, i: i64, o: i64| {
            nn::linear(&p / name, i, o, nn::LinearConfig { bias: c.attention_bias, ..Default::default() })
        };
        let (h, kv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        Self {
            q_proj: lin("q_proj", c.hidden_size, h * d),
            k_proj: lin("k_proj", c.hidden_size, kv * d),
            v_proj: lin("v_proj", c.hidden_size, kv * d),
            o_proj: lin("o_proj", h * d, c.hidden_size),
            q_norm: RmsNorm::new(&p / "q_norm", d, c.rms_norm_eps),
            k_norm: RmsNorm::new(&p / "k_norm", d, c.rms_norm_eps),
            heads: h,
            kv_heads: kv,
            head_dim: d,
        }
    }

    /// `x` [B, L, hidden]; `mask` additive [B, 1, L, T_total]; cos/sin [B, L, head_dim].
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: &mut LayerCache) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let q = self.q_norm.forward(&self.q_proj.forward(x).view([b, l, self.heads, self.head_dim])).transpose(1, 2);
        let k = self.k_norm.forward(&self.k_proj.forward(x).view([b, l, self.kv_heads, self.head_dim])).transpose(1, 2);
        let v = self.v_proj.forward(x).view([b, l, self.kv_heads, self.head_dim]).transpose(1, 2);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = apply_rotary(&q, &cos, &sin);
        let k = apply_rotary(&k, &cos, &sin);
        let (k, v) = cache.append(&k, &v);
        let groups = self.heads / self.kv_heads;
        let k = repeat_kv(&k, groups);
        let v = repeat_kv(&v, groups);
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, scale, false);
        let out = out.transpose(1, 2).reshape([b, l, self.heads * self.head_dim]);
        self.o_proj.forward(&out)
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

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    attn: Attention,
    gate: nn::Linear,
    up: nn::Linear,
    down: nn::Linear,
}

impl DecoderLayer {
    fn new(p: nn::Path, c: &TextConfig) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let mlp = &p / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", c.hidden_size, c.rms_norm_eps),
            attn: Attention::new(&p / "self_attn", c),
            gate: nn::linear(&mlp / "gate_proj", c.hidden_size, c.intermediate_size, no_bias),
            up: nn::linear(&mlp / "up_proj", c.hidden_size, c.intermediate_size, no_bias),
            down: nn::linear(&mlp / "down_proj", c.intermediate_size, c.hidden_size, no_bias),
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: &mut LayerCache) -> Tensor {
        let h = x + self.attn.forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        let n = self.post_attention_layernorm.forward(&h);
        &h + self.down.forward(&(self.gate.forward(&n).silu() * self.up.forward(&n)))
    }
}

/// Embeddings, decoder layers and the final norm.
#[derive(Debug)]
pub struct TextModel {
    pub embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
}

impl TextModel {
    /// Variables under `p` (= `model.language_model`).
    pub fn new(p: nn::Path, c: &TextConfig) -> Self {
        Self {
            embed_tokens: nn::embedding(&p / "embed_tokens", c.vocab_size, c.hidden_size, Default::default()),
            layers: (0..c.num_hidden_layers).map(|i| DecoderLayer::new(&p / "layers" / i, c)).collect(),
            norm: RmsNorm::new(&p / "norm", c.hidden_size, c.rms_norm_eps),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Run the layers on `embeds` [B, L, hidden]. For each `(positions, features)` of
    /// `deepstack`, after layer `i` the feature `features[i]` (if any) is added at the
    /// positions [B, L] marks, in sequence order (DeepStack injection).
    pub fn forward(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        caches: &mut [LayerCache],
        deepstack: &[(Tensor, Vec<Tensor>)],
    ) -> Tensor {
        let mut x = embeds.shallow_clone();
        for (i, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            x = layer.forward(&x, cos, sin, mask, cache);
            for (positions, features) in deepstack {
                if let Some(feature) = features.get(i) {
                    x = add_at_mask(&x, positions, feature);
                }
            }
        }
        self.norm.forward(&x)
    }
}

/// `x` with `values` [n, hidden] added to the rows where `mask` [B, L] is true, in order.
pub fn add_at_mask(x: &Tensor, mask: &Tensor, values: &Tensor) -> Tensor {
    let hidden = x.size()[2];
    let flat = x.reshape([-1, hidden]);
    let index = mask.reshape([-1]).nonzero().squeeze_dim(1);
    flat.index_add(0, &index, &values.to_kind(x.kind())).view(x.size().as_slice())
}
