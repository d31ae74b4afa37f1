//! The Qwen2.5-VL vision tower (`model.visual.*`): bias-free patch embedding, 2-D rope,
//! RMSNorm + SwiGLU blocks with window attention except in `fullatt_block_indexes`, and the
//! `ln_q` + MLP merger. Tokens run through the blocks in window order (merge units kept
//! whole); the merger's output is put back into the processor's order.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::VisionConfig;
use crate::layers::rms_norm::RmsNorm;
use crate::layers::rope::{vision_cos_sin, Grid};
use crate::layers::vision_attention::VisionAttention;
use crate::policy::{VisionPass, VisionTower};

const NORM_EPS: f64 = 1e-6;

#[derive(Debug)]
struct VisionMlp {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl VisionMlp {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        Self {
            gate_proj: nn::linear(&p / "gate_proj", c.hidden_size, c.intermediate_size, Default::default()),
            up_proj: nn::linear(&p / "up_proj", c.hidden_size, c.intermediate_size, Default::default()),
            down_proj: nn::linear(&p / "down_proj", c.intermediate_size, c.hidden_size, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

#[derive(Debug)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        Self {
            norm1: RmsNorm::new(&p / "norm1", c.hidden_size, NORM_EPS),
            norm2: RmsNorm::new(&p / "norm2", c.hidden_size, NORM_EPS),
            attn: VisionAttention::new(&p / "attn", c.hidden_size, c.num_heads),
            mlp: VisionMlp::new(&p / "mlp", c),
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, lengths: &[i64]) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x), cos, sin, lengths);
        &x + self.mlp.forward(&self.norm2.forward(&x))
    }
}

/// `ln_q` RMSNorm per patch, then each merge unit's patches side by side through
/// `mlp.0` (Linear), exact GELU, `mlp.2` (Linear).
#[derive(Debug)]
struct PatchMerger {
    ln_q: RmsNorm,
    mlp_0: nn::Linear,
    mlp_2: nn::Linear,
    merged: i64,
}

impl PatchMerger {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        let mlp = &p / "mlp";
        Self {
            ln_q: RmsNorm::new(&p / "ln_q", c.hidden_size, NORM_EPS),
            mlp_0: nn::linear(&mlp / 0, merged, merged, Default::default()),
            mlp_2: nn::linear(&mlp / 2, merged, c.out_hidden_size, Default::default()),
            merged,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.ln_q.forward(x).view([-1, self.merged]);
        self.mlp_2.forward(&self.mlp_0.forward(&x).gelu("none"))
    }
}

#[derive(Debug)]
pub struct VisionModel {
    patch_weight: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    config: VisionConfig,
    /// Merged tokens per window side.
    window: i64,
}

impl VisionModel {
    /// Variables under `p` (= `model.visual`).
    pub fn new(p: nn::Path, c: &VisionConfig, window: i64) -> Self {
        let kernel = [c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size];
        let bound = 1.0 / ((c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size) as f64).sqrt();
        Self {
            patch_weight: (&p / "patch_embed" / "proj").var(
                "weight",
                &kernel,
                nn::Init::Uniform { lo: -bound, up: bound },
            ),
            blocks: (0..c.depth).map(|i| VisionBlock::new(&p / "blocks" / i, c)).collect(),
            merger: PatchMerger::new(&p / "merger", c),
            config: c.clone(),
            window,
        }
    }
}

/// The window order of the merge units of `grids` and the window lengths in merge units.
///
/// Per grid and frame, the merged `(h/m, w/m)` grid is cut into `window x window` tiles,
/// row-major over tiles and row-major inside a tile; tiles at the bottom and right edges are
/// partial, and empty ones (transformers pads a whole extra tile row or column when the grid
/// divides evenly) are left out.
pub fn window_index(grids: &[Grid], merge: i64, window: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut index, mut lengths) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for &[t, h, w] in grids {
        let (gh, gw) = (h / merge, w / merge);
        for f in 0..t {
            let frame = offset + f * gh * gw;
            for wr in 0..(gh + window - 1) / window {
                for wc in 0..(gw + window - 1) / window {
                    let before = index.len();
                    for r in wr * window..((wr + 1) * window).min(gh) {
                        for c in wc * window..((wc + 1) * window).min(gw) {
                            index.push(frame + r * gw + c);
                        }
                    }
                    lengths.push((index.len() - before) as i64);
                }
            }
        }
        offset += t * gh * gw;
    }
    (index, lengths)
}

impl VisionTower for VisionModel {
    /// Patch embedding, then rope tables and tokens both put into window order.
    fn prepare(&self, pixel_values: &Tensor, grids: &[Grid]) -> VisionPass {
        let c = &self.config;
        let x = pixel_values.to_kind(self.patch_weight.kind());
        // Conv3d with kernel = stride over one patch, no bias: a linear map of the patch.
        let x = x.matmul(&self.patch_weight.view([c.hidden_size, -1]).tr());
        let head_dim = c.hidden_size / c.num_heads;
        let (cos, sin) = vision_cos_sin(grids, c.spatial_merge_size, head_dim, c.rope_theta);
        let (cos, sin) = (cos.to_device(x.device()), sin.to_device(x.device()));
        let unit = c.spatial_merge_size * c.spatial_merge_size;
        let (order, lengths) = window_index(grids, c.spatial_merge_size, self.window);
        let order = Tensor::from_slice(&order).to_device(x.device());
        let reorder = |t: &Tensor| {
            let (n, d) = (t.size()[0], t.size()[1]);
            t.view([n / unit, unit, d]).index_select(0, &order).view([n, d])
        };
        let frames: Vec<i64> = grids.iter().flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize)).collect();
        let windows: Vec<i64> = lengths.into_iter().filter(|&l| l > 0).map(|l| l * unit).collect();
        VisionPass {
            x: reorder(&x),
            cos: reorder(&cos),
            sin: reorder(&sin),
            frames,
            windows,
            window_index: Some(order),
        }
    }

    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Windowed attention, or whole frames in the `fullatt_block_indexes` blocks (windows
    /// never cross a frame, so frame boundaries hold in window order too).
    fn block(&self, i: usize, x: &Tensor, pass: &VisionPass) -> (Tensor, Option<Tensor>) {
        let full = self.config.fullatt_block_indexes.contains(&(i as i64));
        let segments = if full { &pass.frames } else { &pass.windows };
        (self.blocks[i].forward(x, &pass.cos, &pass.sin, segments), None)
    }

    fn merge(&self, x: &Tensor, pass: &VisionPass) -> Tensor {
        let merged = self.merger.forward(x);
        match &pass.window_index {
            Some(order) => merged.index_select(0, &order.argsort(0, false)),
            None => merged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_index_matches_the_worked_example() {
        // 1x20x26 patches: merged 10x13, windows of 4 -> 3x4 tiles.
        let (index, lengths) = window_index(&[[1, 20, 26]], 2, 4);
        assert_eq!(lengths, [16, 16, 16, 4, 16, 16, 16, 4, 8, 8, 8, 2]);
        assert_eq!(index[..16], [0, 1, 2, 3, 13, 14, 15, 16, 26, 27, 28, 29, 39, 40, 41, 42]);
        let mut sorted = index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..130).collect::<Vec<_>>());
    }

    #[test]
    fn frames_and_grids_stay_in_order() {
        let (index, lengths) = window_index(&[[2, 4, 4], [1, 2, 2]], 2, 4);
        assert_eq!(index, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(lengths, [4, 4, 1]);
    }
}
