//! The parts the model families share: RMSNorm, the text decoder (attention with its
//! options, SwiGLU MLP), rope primitives, segment attention of the vision towers, the KV
//! caches (growing, and the engine's fixed slots), masks and placeholder scattering.

pub mod attention;
pub mod decoder;
pub mod kv_arena;
pub mod kv_cache;
pub mod rms_norm;
pub mod rope;
pub mod vision_attention;

use tch::{Device, Kind, Tensor};

use crate::PolicyError;
use rope::RopeIndex;

/// What the shared text decoder needs to know; each family fills it from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    /// Bias on q_proj, k_proj and v_proj (Qwen2: yes; Qwen3: `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Qwen2: no; Qwen3: `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before the rope (Qwen3).
    pub qk_norm: bool,
}

/// `[B, L, L]` (or `[B, 1, T]`) allowed -> additive `[B, 1, ., .]`: 0 where allowed, the
/// dtype's minimum elsewhere (as transformers; a fully masked pad row stays finite).
pub fn additive_mask(allowed: &Tensor, kind: Kind) -> Tensor {
    let min = match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    };
    let zeros = Tensor::zeros(allowed.size(), (kind, allowed.device()));
    zeros.masked_fill(&allowed.logical_not(), min).unsqueeze(1)
}

/// The causal mask of a prompt batch whose real keys are `key_valid` [B, L].
pub fn causal_mask(key_valid: &Tensor, kind: Kind) -> Tensor {
    let l = key_valid.size()[1];
    let causal = Tensor::ones([l, l], (Kind::Bool, key_valid.device())).tril(0);
    additive_mask(&causal.unsqueeze(0).logical_and(&key_valid.unsqueeze(1)), kind)
}

/// Put `values` [n, hidden] at the rows of `embeds` [B, L, hidden] where `positions` is true.
pub fn scatter(embeds: &Tensor, positions: &Tensor, values: &Tensor, what: &str) -> Result<Tensor, PolicyError> {
    let found = positions.sum(Kind::Int64).int64_value(&[]);
    let expected = values.size()[0];
    if found != expected {
        return Err(PolicyError::Input(format!(
            "the prompts hold {found} {what} placeholder tokens but the {what} inputs give {expected} embeddings"
        )));
    }
    Ok(embeds.masked_scatter(&positions.unsqueeze(-1), &values.to_kind(embeds.kind())))
}

/// `x` with `values` [n, hidden] added to the rows where `mask` [B, L] is true, in order.
pub fn add_at_mask(x: &Tensor, mask: &Tensor, values: &Tensor) -> Tensor {
    let hidden = x.size()[2];
    let flat = x.reshape([-1, hidden]);
    let index = mask.reshape([-1]).nonzero().squeeze_dim(1);
    flat.index_add(0, &index, &values.to_kind(x.kind())).view(x.size().as_slice())
}

/// A batch's rows as vectors.
pub type Rows = Vec<Vec<i64>>;

/// Ids and mask of a batch as row vectors (for the rope index).
pub fn id_rows(ids: &Tensor, mask: &Tensor) -> Result<(Rows, Rows), PolicyError> {
    let ids = Vec::<Vec<i64>>::try_from(&ids.to_device(Device::Cpu))?;
    let mask = Vec::<Vec<i64>>::try_from(&mask.to_kind(Kind::Int64).to_device(Device::Cpu))?;
    Ok((ids, mask))
}

/// The rope index of a batch as position ids `[3, B, L]` on `device`, and each row's first
/// decode position (the prompt's largest position + 1).
pub fn position_ids(index: &[RopeIndex], mask_rows: &[Vec<i64>], device: Device) -> (Tensor, Vec<i64>) {
    let b = index.len() as i64;
    let l = index.first().map_or(0, |r| r.positions[0].len()) as i64;
    let flat: Vec<i64> = (0..3).flat_map(|axis| index.iter().flat_map(move |r| r.positions[axis].clone())).collect();
    let positions = Tensor::from_slice(&flat).view([3, b, l]).to_device(device);
    let next =
        index.iter().zip(mask_rows).map(|(r, m)| m.iter().filter(|&&v| v != 0).count() as i64 + r.delta).collect();
    (positions, next)
}
