//! Rotary position embeddings: the interleaved multimodal rope of the text decoder (with
//! its position ids and rope deltas) and the 2-D rope of the vision tower. The arithmetic
//! mirrors transformers' in f32 so the angles agree bit for bit.

use tch::{Kind, Tensor};

use crate::PolicyError;

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

/// Text rope tables for position ids `[3, B, L]` (T, H, W axes): cos and sin `[B, L, head_dim]`.
/// Frequency slot `j` follows H when `j % 3 == 1 && j < 3 * section[1]`, W when
/// `j % 3 == 2 && j < 3 * section[2]`, else T (Qwen3-VL's interleaved layout).
pub fn text_cos_sin(position_ids: &Tensor, inv_freq: &Tensor, section: [i64; 3]) -> (Tensor, Tensor) {
    let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.to_device(position_ids.device());
    let half = inv_freq.size()[0];
    let axis: Vec<i64> = (0..half)
        .map(|j| {
            if j % 3 == 1 && j < 3 * section[1] {
                1
            } else if j % 3 == 2 && j < 3 * section[2] {
                2
            } else {
                0
            }
        })
        .collect();
    // Pick, for every slot, the axis that drives it: gather along dim 0.
    let size = freqs.size();
    let index = Tensor::from_slice(&axis).to_device(freqs.device()).view([1, 1, 1, half]).expand([1, size[1], size[2], half], false);
    let chosen = freqs.gather(0, &index, false).squeeze_dim(0);
    let emb = Tensor::cat(&[&chosen, &chosen], -1);
    (emb.cos(), emb.sin())
}

/// One sequence's multimodal rope positions and delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// `[3][L]` positions (T, H, W); pads get 0 on every axis.
    pub positions: [Vec<i64>; 3],
    /// `max(position) + 1 - (non-pad tokens)`: the offset of later decode positions.
    pub delta: i64,
}

/// A grid `(t, h, w)` in patches.
pub type Grid = [i64; 3];

/// Positions for a batch, as transformers' `get_rope_index`: runs of image (video) tokens
/// take the next image (video frame) grid and get 3-D positions `(cur, cur + row, cur + col)`
/// over the merged grid; the running position then advances by `max(h, w) / merge`. Text
/// tokens advance it by one. Videos are split into their frames; a run of video tokens takes
/// as many frames as it holds.
pub fn rope_index(
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    image_grids: &[Grid],
    video_grids: &[Grid],
    image_token_id: i64,
    video_token_id: i64,
    merge: i64,
) -> Result<Vec<RopeIndex>, PolicyError> {
    let mut images = image_grids.iter().copied();
    let mut frames = video_grids.iter().flat_map(|g| std::iter::repeat_n([1, g[1], g[2]], g[0].max(0) as usize));
    let mut out = Vec::with_capacity(input_ids.len());
    for (row, (ids, mask)) in input_ids.iter().zip(attention_mask).enumerate() {
        let len = ids.len();
        let mut positions = [vec![0i64; len], vec![0i64; len], vec![0i64; len]];
        let kept: Vec<usize> = (0..len).filter(|&i| mask[i] != 0).collect();
        let mut cur = 0i64;
        let mut max_pos = -1i64;
        let mut k = 0;
        while k < kept.len() {
            let id = ids[kept[k]];
            let modality = if id == image_token_id { 1 } else if id == video_token_id { 2 } else { 0 };
            if modality == 0 {
                for axis in &mut positions {
                    axis[kept[k]] = cur;
                }
                max_pos = max_pos.max(cur);
                cur += 1;
                k += 1;
                continue;
            }
            let run_end = (k..kept.len()).find(|&j| ids[kept[j]] != id).unwrap_or(kept.len());
            while k < run_end {
                let grid = if modality == 1 { images.next() } else { frames.next() };
                let [_, h, w] = grid.ok_or_else(|| {
                    PolicyError::Input(format!(
                        "row {row}: more {} placeholder tokens than {} grids",
                        if modality == 1 { "image" } else { "video" },
                        if modality == 1 { "image" } else { "video frame" }
                    ))
                })?;
                let (gh, gw) = (h / merge, w / merge);
                if k + (gh * gw) as usize > run_end {
                    return Err(PolicyError::Input(format!(
                        "row {row}: a run of {} placeholder tokens does not fill its {gh}x{gw} grid",
                        run_end - k
                    )));
                }
                for r in 0..gh {
                    for c in 0..gw {
                        let at = kept[k];
                        positions[0][at] = cur;
                        positions[1][at] = cur + r;
                        positions[2][at] = cur + c;
                        k += 1;
                    }
                }
                max_pos = max_pos.max(cur + (gh - 1).max(gw - 1).max(0));
                cur += gh.max(gw);
            }
        }
        out.push(RopeIndex { positions, delta: max_pos + 1 - kept.len() as i64 });
    }
    if images.next().is_some() || frames.next().is_some() {
        return Err(PolicyError::Input("more image / video grids than placeholder runs in the prompts".into()));
    }
    Ok(out)
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
    fn rope_index_follows_the_reference_rules() {
        // text(2) + image 4x4 patches (2x2 merged) + text(1); one left pad.
        let ids = vec![vec![0, 5, 6, 9, 9, 9, 9, 7]];
        let mask = vec![vec![0, 1, 1, 1, 1, 1, 1, 1]];
        let r = rope_index(&ids, &mask, &[[1, 4, 4]], &[], 9, 10, 2).unwrap();
        assert_eq!(r[0].positions[0], [0, 0, 1, 2, 2, 2, 2, 4]);
        assert_eq!(r[0].positions[1], [0, 0, 1, 2, 2, 3, 3, 4]);
        assert_eq!(r[0].positions[2], [0, 0, 1, 2, 3, 2, 3, 4]);
        assert_eq!(r[0].delta, 5 - 7);
        let err = rope_index(&ids, &mask, &[], &[], 9, 10, 2).unwrap_err().to_string();
        assert!(err.contains("more image placeholder tokens than image grids"), "{err}");
    }
}
