//! The Qwen text decoder (`model.language_model.*`): token embeddings, pre-norm decoder
//! layers (attention + SwiGLU MLP) and the final norm. Qwen2 and Qwen3 differ only in
//! the attention options of [`DecoderConfig`].

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::Attention;
use super::kv_arena::SlotView;
use super::kv_cache::LayerCache;
use super::rms_norm::RmsNorm;
use super::DecoderConfig;

/// One pre-norm layer: `x += attn(norm(x))`, `x += down(silu(gate(n)) * up(n))`.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    self_attn: Attention,
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl DecoderLayer {
    /// Variables under `p` (= `...layers.N`).
    pub fn new(p: nn::Path, c: &DecoderConfig) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let mlp = &p / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", c.hidden_size, c.rms_norm_eps),
            self_attn: Attention::new(&p / "self_attn", c),
            gate_proj: nn::linear(&mlp / "gate_proj", c.hidden_size, c.intermediate_size, no_bias),
            up_proj: nn::linear(&mlp / "up_proj", c.hidden_size, c.intermediate_size, no_bias),
            down_proj: nn::linear(&mlp / "down_proj", c.intermediate_size, c.hidden_size, no_bias),
        }
    }

    /// `x` [B, L, hidden] with rope tables [B, L, head_dim] and the additive mask.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: &mut LayerCache) -> Tensor {
        self.forward_with(x, |attn, n| attn.forward(n, cos, sin, mask, cache))
    }

    /// One decode token per engine slot (see [`Attention::forward_slots`]).
    pub fn forward_slots(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, slots: SlotView<'_>) -> Tensor {
        self.forward_with(x, |attn, n| attn.forward_slots(n, cos, sin, mask, slots))
    }

    /// (KV heads, head dim) of its attention.
    pub fn kv_layout(&self) -> (i64, i64) {
        self.self_attn.kv_layout()
    }

    /// The layer around `attend` (its attention over whichever cache holds the keys).
    fn forward_with(&self, x: &Tensor, attend: impl FnOnce(&Attention, &Tensor) -> Tensor) -> Tensor {
        let h = x + attend(&self.self_attn, &self.input_layernorm.forward(x));
        let n = self.post_attention_layernorm.forward(&h);
        &h + self.down_proj.forward(&(self.gate_proj.forward(&n).silu() * self.up_proj.forward(&n)))
    }
}

/// Embeddings, decoder layers and the final norm, each reachable on its own so a caller
/// can drive the forward one layer at a time (recomputation, layer-wise sharding).
#[derive(Debug)]
pub struct TextModel {
    pub embed_tokens: nn::Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl TextModel {
    /// Variables under `p` (= `model.language_model`).
    pub fn new(p: nn::Path, c: &DecoderConfig) -> Self {
        Self {
            embed_tokens: nn::embedding(&p / "embed_tokens", c.vocab_size, c.hidden_size, Default::default()),
            layers: (0..c.num_hidden_layers).map(|i| DecoderLayer::new(&p / "layers" / i, c)).collect(),
            norm: RmsNorm::new(&p / "norm", c.hidden_size, c.rms_norm_eps),
        }
    }

    /// Vocabulary logits of final hidden states: `head`, or the tied embedding without one.
    pub fn logits(&self, head: Option<&nn::Linear>, hidden: &Tensor) -> Tensor {
        match head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.ws.tr()),
        }
    }
}
