//! Rotary position embedding primitives shared by the families: inverse frequencies,
//! `rotate_half`, the text decoder's multimodal rope in either slot layout (Qwen3's
//! interleaved, Qwen2.5's sectioned), and the vision towers' 2-D rope. The arithmetic
//! mirrors transformers' in f32 so the angles agree bit for bit.

use tch::{Kind, Tensor};

/// A grid `(t, h, w)` in patches.
pub type Grid = [i64; 3];

/// One sequence's multimodal rope positions and delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// `[3][L]` positions (T, H, W); pads get 0 on every axis.
    pub positions: [Vec<i64>; 3],
    /// `max(position) + 1 - (non-pad tokens)`: the offset of later decode positions.
    pub delta: i64,
}

/// `1 / theta^(arange(0, dim, 2) / dim)` in f32, as torch computes it.
pub fn inverse_frequencies(theta: f64, dim: i64) -> Tensor {
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Float, tch::Device::Cpu)) / dim as f64;
    Tensor::from(theta as f32).pow(&exponents).reciprocal()
}

/// `x` with its halves rotated: `cat(-x2, x1)`.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// `x * cos + rotate_half(x) * sin`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// Which position axis (0 = T, 1 = H, 2 = W) drives each of the `half` frequency slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropeLayout(Vec<i64>);

impl MropeLayout {
    /// Qwen3-VL: slot `j` follows H when `j % 3 == 1 && j < 3 * section[1]`, W when
    /// `j % 3 == 2 && j < 3 * section[2]`, else T.
    pub fn interleaved(section: [i64; 3], half: i64) -> Self {
        Self(
            (0..half)
                .map(|j| {
                    if j % 3 == 1 && j < 3 * section[1] {
                        1
                    } else if j % 3 == 2 && j < 3 * section[2] {
                        2
                    } else {
                        0
                    }
                })
                .collect(),
        )
    }

    /// Qwen2-VL / Qwen2.5-VL: consecutive chunks, the first `section[0]` slots follow T,
    /// the next `section[1]` H, the last `section[2]` W.
    pub fn sectioned(section: [i64; 3]) -> Self {
        Self((0..3).flat_map(|axis| std::iter::repeat_n(axis as i64, section[axis].max(0) as usize)).collect())
    }

    /// Text rope tables for position ids `[3, B, L]`: cos and sin `[B, L, 2 * half]` (f32).
    pub fn cos_sin(&self, position_ids: &Tensor, inv_freq: &Tensor) -> (Tensor, Tensor) {
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.to_device(position_ids.device());
        let half = self.0.len() as i64;
        // Pick, for every slot, the axis that drives it: gather along dim 0.
        let size = freqs.size();
        let index = Tensor::from_slice(&self.0)
            .to_device(freqs.device())
            .view([1, 1, 1, half])
            .expand([1, size[1], size[2], half], false);
        let chosen = freqs.gather(0, &index, false).squeeze_dim(0);
        let emb = Tensor::cat(&[&chosen, &chosen], -1);
        (emb.cos(), emb.sin())
    }
}

/// Vision rope tables for a packed set of grids: cos and sin `[N, head_dim]` with tokens in
/// 2x2-merge-block order, rows then columns, repeated over `t`.
pub fn vision_cos_sin(grids: &[Grid], merge: i64, head_dim: i64, theta: f64) -> (Tensor, Tensor) {
    let (rows, cols) = vision_rows_cols(grids, merge);
    let inv = inverse_frequencies(theta, head_dim / 2);
    let rows = Tensor::from_slice(&rows).to_kind(Kind::Float).unsqueeze(-1) * &inv;
    let cols = Tensor::from_slice(&cols).to_kind(Kind::Float).unsqueeze(-1) * &inv;
    let hw = Tensor::cat(&[rows, cols], -1);
    let emb = Tensor::cat(&[&hw, &hw], -1);
    (emb.cos(), emb.sin())
}

/// Row and column of every patch, in merge-block order, repeated for each frame.
pub fn vision_rows_cols(grids: &[Grid], merge: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut rows, mut cols) = (Vec::new(), Vec::new());
    for &[t, h, w] in grids {
        for _ in 0..t {
            for br in 0..h / merge {
                for bc in 0..w / merge {
                    for ir in 0..merge {
                        for ic in 0..merge {
                            rows.push(br * merge + ir);
                            cols.push(bc * merge + ic);
                        }
                    }
                }
            }
        }
    }
    (rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_layouts() {
        assert_eq!(MropeLayout::sectioned([2, 3, 3]).0, [0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(MropeLayout::interleaved([3, 3, 2], 8).0, [0, 1, 2, 0, 1, 2, 0, 1]);
    }
}
