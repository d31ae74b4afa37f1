//! Bidirectional attention of the vision towers within segments of the packed patch
//! sequence (one segment per image or video frame, or per window), 2-D rope in f32.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::rope::apply_rotary;

/// `attn.qkv` and `attn.proj`, both with bias.
#[derive(Debug)]
pub struct VisionAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl VisionAttention {
    /// Variables under `p` (= `...blocks.N.attn`), width `dim`.
    pub fn new(p: nn::Path, dim: i64, heads: i64) -> Self {
        Self {
            qkv: nn::linear(&p / "qkv", dim, 3 * dim, Default::default()),
            proj: nn::linear(&p / "proj", dim, dim, Default::default()),
            heads,
        }
    }

    /// `x` [N, C]; attention only within each segment of `lengths` tokens (summing to N).
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, lengths: &[i64]) -> Tensor {
        let n = x.size()[0];
        let qkv = self.qkv.forward(x).view([n, 3, self.heads, -1]).permute([1, 0, 2, 3]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        // [N, heads, hd] with cos/sin [N, 1, hd]; rotation in f32.
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = apply_rotary(&q.to_kind(Kind::Float), &cos, &sin).to_kind(x.kind());
        let k = apply_rotary(&k.to_kind(Kind::Float), &cos, &sin).to_kind(x.kind());
        let head_dim = q.size()[2];
        let scale = (head_dim as f64).powf(-0.5);
        let mut outputs = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &len in lengths {
            // [heads, len, hd]
            let qs = q.narrow(0, start, len).transpose(0, 1);
            let ks = k.narrow(0, start, len).transpose(0, 1);
            let vs = v.narrow(0, start, len).transpose(0, 1);
            let weights = (qs.matmul(&ks.transpose(1, 2)) * scale).softmax(-1, Kind::Float).to_kind(x.kind());
            outputs.push(weights.matmul(&vs).transpose(0, 1));
            start += len;
        }
        self.proj.forward(&Tensor::cat(&outputs, 0).reshape([n, -1]))
    }
}
