//! ECG-JEPA's encoder (`MaskTransformer`, Kim 2024), as QoQ-Med calls it:
//! `representation(x)` for `x` [B, 8, 2500], unmasked.
//!
//! 1. Cut each lead into 50-sample patches: 8 x 50 = 400 tokens, lead-major
//!    (token = lead * 50 + patch), and embed them with `W_P`, Linear(50 -> 768).
//! 2. 12 pre-LN blocks, `x = block(x + pos_embed)`: the 2-D sin-cos code is added before
//!    *every* block, not once. Each block: `x + proj(attn(norm1(x)))`, then
//!    `x + fc2(gelu(fc1(norm2(x))))`; LayerNorm eps 1e-5, 16 heads, qkv without bias,
//!    exact GELU.
//! 3. Attention is cross-pattern (CroPA): token (lead a, patch s) sees (lead b, patch t)
//!    iff a == b or s == t.
//! 4. `norm`, then the mean over the 400 tokens: [B, 768].

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::EcgEncoderConfig;
use crate::PolicyError;

/// `encoder_blocks.blocks.N.attn`.
#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &EcgEncoderConfig) -> Self {
        let e = c.embed_dim;
        let no_bias = nn::LinearConfig { bias: false, ws_init: weight_init(), ..Default::default() };
        Self {
            qkv: nn::linear(&p / "qkv", e, 3 * e, no_bias),
            proj: nn::linear(&p / "proj", e, e, linear_config()),
            heads: c.num_heads,
        }
    }

    /// `x` [B, N, E]; `mask` additive [N, N].
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, n, e) = x.size3().expect("[B, N, E]");
        let head_dim = e / self.heads;
        // [3, B, heads, N, head_dim]
        let qkv = self.qkv.forward(x).view([b, n, 3, self.heads, head_dim]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let scores = q.matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5) + mask;
        let weights = scores.softmax(-1, Kind::Float).to_kind(x.kind());
        self.proj.forward(&weights.matmul(&v).transpose(1, 2).reshape([b, n, e]))
    }
}

/// `encoder_blocks.blocks.N.mlp`.
#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).gelu("none"))
    }
}

/// `encoder_blocks.blocks.N`.
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: nn::Path, c: &EcgEncoderConfig) -> Self {
        Self {
            norm1: layer_norm(&p / "norm1", c.embed_dim),
            attn: Attention::new(&p / "attn", c),
            norm2: layer_norm(&p / "norm2", c.embed_dim),
            mlp: Mlp {
                fc1: nn::linear(&p / "mlp" / "fc1", c.embed_dim, c.mlp_dim, linear_config()),
                fc2: nn::linear(&p / "mlp" / "fc2", c.mlp_dim, c.embed_dim, linear_config()),
            },
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x), mask);
        &x + self.mlp.forward(&self.norm2.forward(&x))
    }
}

/// `time_series_embedding.encoder`: ECG-JEPA's encoder, unmasked.
#[derive(Debug)]
pub struct EcgJepaEncoder {
    /// `W_P`: the patch embedding.
    w_p: nn::Linear,
    /// `pos_embed` [400, E]: starts as the 2-D sin-cos code; a variable, as in QoQ-Med
    /// (which trains it unless the whole encoder is frozen).
    pos_embed: Tensor,
    /// `encoder_blocks.blocks`.
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    /// The cross-pattern mask, additive [400, 400] f32 (0 or -inf); not a weight.
    mask: Tensor,
    config: EcgEncoderConfig,
}

impl EcgJepaEncoder {
    /// Variables under `p` (= `time_series_embedding.encoder`), randomly initialised as
    /// ECG-JEPA starts: weights N(0, 0.02), biases 0, LayerNorms 1 / 0, `pos_embed` the
    /// sin-cos code.
    pub fn new(p: nn::Path, config: &EcgEncoderConfig) -> Self {
        let e = config.embed_dim;
        let w_p = nn::linear(&p / "W_P", config.patch_size, e, linear_config());
        let pos_embed = p.var("pos_embed", &[config.tokens(), e], nn::Init::Const(0.0));
        tch::no_grad(|| {
            let code = sincos_2d(e, config.leads, config.patches()).to_device(pos_embed.device());
            pos_embed.shallow_clone().copy_(&code.to_kind(pos_embed.kind()));
        });
        let blocks_path = &p / "encoder_blocks" / "blocks";
        let blocks = (0..config.depth).map(|i| Block::new(&blocks_path / i, config)).collect();
        let mask = cross_pattern_mask(config.leads, config.patches()).to_device(p.device());
        Self { w_p, pos_embed, blocks, norm: layer_norm(&p / "norm", e), mask, config: *config }
    }

    pub fn config(&self) -> &EcgEncoderConfig {
        &self.config
    }

    /// `x` [B, leads, samples] -> [B, embed_dim], in the weights' dtype.
    pub fn representation(&self, x: &Tensor) -> Result<Tensor, PolicyError> {
        let c = &self.config;
        let size = x.size();
        if size.len() != 3 || size[1] != c.leads || size[2] != c.samples {
            return Err(PolicyError::Input(format!(
                "ECG signals have shape {size:?}; the encoder takes [n, {}, {}] (preprocess them first)",
                c.leads, c.samples
            )));
        }
        let kind = self.pos_embed.kind();
        let patches = x.to_device(self.pos_embed.device()).to_kind(kind).reshape([size[0], c.tokens(), c.patch_size]);
        let mask = self.mask.to_kind(kind);
        let mut h = self.w_p.forward(&patches);
        for block in &self.blocks {
            h = block.forward(&(h + &self.pos_embed), &mask);
        }
        Ok(self.norm.forward(&h).mean_dim(1, false, kind))
    }
}

fn weight_init() -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev: 0.02 }
}

fn linear_config() -> nn::LinearConfig {
    nn::LinearConfig { ws_init: weight_init(), bs_init: Some(nn::Init::Const(0.0)), bias: true }
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], nn::LayerNormConfig { eps: 1e-5, ..Default::default() })
}

/// MAE's 2-D sin-cos code over a (leads x patches) grid, [leads * patches, dim], row
/// `lead * patches + patch`: the first half of the channels encodes the patch (time)
/// index, the second the lead; each half is `[sin(pos w_k), cos(pos w_k)]`,
/// `w_k = 10000^(-k / (dim / 4))`, k < dim / 4.
pub fn sincos_2d(dim: i64, leads: i64, patches: i64) -> Tensor {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity((leads * patches * dim) as usize);
    for lead in 0..leads {
        for patch in 0..patches {
            for pos in [patch, lead] {
                out.extend(omega.iter().map(|w| (pos as f64 * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos as f64 * w).cos() as f32));
            }
        }
    }
    Tensor::from_slice(&out).view([leads * patches, dim])
}

/// CroPA: additive [N, N] f32, 0 where (lead a, patch s) may see (lead b, patch t), i.e.
/// a == b or s == t, and -inf elsewhere.
pub fn cross_pattern_mask(leads: i64, patches: i64) -> Tensor {
    let token = Tensor::arange(leads * patches, (Kind::Int64, tch::Device::Cpu));
    let (lead, patch) = (token.divide_scalar_mode(patches, "floor"), token.remainder(patches));
    let same_lead = lead.unsqueeze(1).eq_tensor(&lead.unsqueeze(0));
    let same_patch = patch.unsqueeze(1).eq_tensor(&patch.unsqueeze(0));
    let allowed = same_lead.logical_or(&same_patch);
    Tensor::zeros([leads * patches, leads * patches], (Kind::Float, tch::Device::Cpu))
        .masked_fill(&allowed.logical_not(), f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_pattern_mask_allows_same_lead_or_same_patch_only() {
        let m = cross_pattern_mask(3, 4);
        let at = |a: i64, s: i64, b: i64, t: i64| m.double_value(&[a * 4 + s, b * 4 + t]);
        assert_eq!(at(0, 1, 0, 3), 0.0); // same lead
        assert_eq!(at(0, 1, 2, 1), 0.0); // same patch
        assert_eq!(at(0, 1, 2, 2), f64::NEG_INFINITY);
        // Each token sees its lead's 4 patches and the 2 other leads at its patch.
        let allowed = m.eq(0.0).sum_dim_intlist(1, false, Kind::Int64);
        assert!(allowed.eq(4 + 2).all().int64_value(&[]) == 1);
    }

    #[test]
    fn sincos_code_puts_the_patch_first_and_the_lead_second() {
        let c = sincos_2d(8, 2, 3);
        // Row of (lead 1, patch 2): channels 0..2 sin(2 w), 2..4 cos(2 w), 4..6 sin(1 w), 6..8 cos(1 w).
        let row = Vec::<f32>::try_from(c.get(5)).unwrap();
        let w = [1.0f64, 0.01];
        let want: Vec<f32> = [2.0f64, 1.0]
            .iter()
            .flat_map(|&p| w.iter().map(move |x| (p * x).sin()).chain(w.iter().map(move |x| (p * x).cos())))
            .map(|v| v as f32)
            .collect();
        assert_eq!(row, want);
    }

    #[test]
    fn wrong_signal_shapes_are_refused() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let c = EcgEncoderConfig { embed_dim: 16, depth: 1, num_heads: 4, mlp_dim: 32, ..Default::default() };
        let enc = EcgJepaEncoder::new(vs.root(), &c);
        let e = enc.representation(&Tensor::zeros([2, 12, 2500], (Kind::Float, tch::Device::Cpu))).unwrap_err();
        assert!(e.to_string().contains("[n, 8, 2500]"), "{e}");
        let ok = enc.representation(&Tensor::zeros([2, 8, 2500], (Kind::Float, tch::Device::Cpu))).unwrap();
        assert_eq!(ok.size(), [2, 16]);
    }
}
