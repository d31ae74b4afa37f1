//! The vision tower (`model.visual.*`): patch embedding, interpolated learned positions,
//! 2-D rotary attention within each image (each video frame), DeepStack mergers and the
//! final merger. Module and weight names mirror transformers' `Qwen3VLVisionModel`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::VisionConfig;
use crate::layers::rope::{vision_cos_sin, vision_rows_cols, Grid};
use crate::layers::vision_attention::VisionAttention;
use crate::policy::{VisionPass, VisionTower};

/// `gelu_pytorch_tanh` in the block MLPs; exact erf GELU in the mergers.
fn gelu_tanh(x: &Tensor) -> Tensor {
    x.gelu("tanh")
}

fn gelu_erf(x: &Tensor) -> Tensor {
    x.gelu("none")
}

fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], nn::LayerNormConfig { eps: 1e-6, ..Default::default() })
}

#[derive(Debug)]
struct VisionBlock {
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
    attn: VisionAttention,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl VisionBlock {
    fn new(p: nn::Path, c: &VisionConfig) -> Self {
        Self {
            norm1: layer_norm(&p / "norm1", c.hidden_size),
            norm2: layer_norm(&p / "norm2", c.hidden_size),
            attn: VisionAttention::new(&p / "attn", c.hidden_size, c.num_heads),
            fc1: nn::linear(&p / "mlp" / "linear_fc1", c.hidden_size, c.intermediate_size, Default::default()),
            fc2: nn::linear(&p / "mlp" / "linear_fc2", c.intermediate_size, c.hidden_size, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, lengths: &[i64]) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x), cos, sin, lengths);
        let h = self.fc2.forward(&gelu_tanh(&self.fc1.forward(&self.norm2.forward(&x))));
        x + h
    }
}

/// Merges each 2x2 block of patch features into one token of the text width.
#[derive(Debug)]
struct PatchMerger {
    norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    /// DeepStack mergers normalise after gathering the block (4C); the final one before (C).
    postshuffle_norm: bool,
    merged: i64,
}

impl PatchMerger {
    fn new(p: nn::Path, c: &VisionConfig, postshuffle_norm: bool) -> Self {
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        Self {
            norm: layer_norm(&p / "norm", if postshuffle_norm { merged } else { c.hidden_size }),
            fc1: nn::linear(&p / "linear_fc1", merged, merged, Default::default()),
            fc2: nn::linear(&p / "linear_fc2", merged, c.out_hidden_size, Default::default()),
            postshuffle_norm,
            merged,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.postshuffle_norm {
            self.norm.forward(&x.view([-1, self.merged]))
        } else {
            self.norm.forward(x).view([-1, self.merged])
        };
        self.fc2.forward(&gelu_erf(&self.fc1.forward(&x)))
    }
}

#[derive(Debug)]
pub struct VisionModel {
    patch_weight: Tensor,
    patch_bias: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    deepstack_merger_list: Vec<PatchMerger>,
    config: VisionConfig,
}

impl VisionModel {
    /// Variables under `p` (= `model.visual`).
    pub fn new(p: nn::Path, c: &VisionConfig) -> Self {
        let patch = &p / "patch_embed" / "proj";
        let kernel = [c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size];
        let bound = 1.0 / ((c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size) as f64).sqrt();
        Self {
            patch_weight: patch.var("weight", &kernel, nn::Init::Uniform { lo: -bound, up: bound }),
            patch_bias: patch.var("bias", &[c.hidden_size], nn::Init::Uniform { lo: -bound, up: bound }),
            pos_embed: (&p / "pos_embed").var(
                "weight",
                &[c.num_position_embeddings, c.hidden_size],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            ),
            blocks: (0..c.depth).map(|i| VisionBlock::new(&p / "blocks" / i, c)).collect(),
            merger: PatchMerger::new(&p / "merger", c, false),
            deepstack_merger_list: (0..c.deepstack_visual_indexes.len())
                .map(|i| PatchMerger::new(&p / "deepstack_merger_list" / i as i64, c, true))
                .collect(),
            config: c.clone(),
        }
    }

    /// The learned position table bilinearly resampled (align_corners) to each grid, in
    /// merge-block order, repeated over frames: four taps per patch, summed in tap order.
    fn position_embeddings(&self, grids: &[Grid]) -> Tensor {
        let side = (self.config.num_position_embeddings as f64).sqrt() as i64;
        let merge = self.config.spatial_merge_size;
        let (rows, cols) = vision_rows_cols(grids, merge);
        let (mut heights, mut widths) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for &[t, h, w] in grids {
            let n = (t * h * w) as usize;
            heights.extend(std::iter::repeat_n(h, n));
            widths.extend(std::iter::repeat_n(w, n));
        }
        let (h_taps, h_weights) = axis_taps(&rows, &heights, side);
        let (w_taps, w_weights) = axis_taps(&cols, &widths, side);
        let mut index = Vec::with_capacity(rows.len() * 4);
        let mut weight = Vec::with_capacity(rows.len() * 4);
        for i in 0..rows.len() {
            for a in 0..2 {
                for b in 0..2 {
                    index.push(h_taps[i][a] * side + w_taps[i][b]);
                    weight.push(h_weights[i][a] * w_weights[i][b]);
                }
            }
        }
        let device = self.pos_embed.device();
        let index = Tensor::from_slice(&index).to_device(device);
        let weight = Tensor::from_slice(&weight).to_device(device).view([-1, 4, 1]);
        let taps = self.pos_embed.index_select(0, &index).view([-1, 4, self.config.hidden_size]);
        (taps * weight.to_kind(self.pos_embed.kind())).sum_dim_intlist(1, false, None)
    }
}

impl VisionTower for VisionModel {
    /// `pixel_values` [N, C_in * t * p * p] (rows in (c, t, py, px) order) for the packed
    /// `grids`: patch embedding plus the interpolated learned positions.
    fn prepare(&self, pixel_values: &Tensor, grids: &[Grid]) -> VisionPass {
        let c = &self.config;
        let x = pixel_values.to_kind(self.patch_weight.kind());
        // Conv3d with kernel = stride over one patch is a linear map of the flattened patch.
        let w = self.patch_weight.view([c.hidden_size, -1]);
        let x = x.matmul(&w.tr()) + &self.patch_bias;
        let x = &x + self.position_embeddings(grids).to_kind(x.kind());
        let head_dim = c.hidden_size / c.num_heads;
        let (cos, sin) = vision_cos_sin(grids, c.spatial_merge_size, head_dim, c.rope_theta);
        let (cos, sin) = (cos.to_device(x.device()), sin.to_device(x.device()));
        let frames: Vec<i64> = grids.iter().flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize)).collect();
        VisionPass { x, cos, sin, frames, windows: Vec::new(), window_index: None }
    }

    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Every block attends within frames; blocks named in `deepstack_visual_indexes` also
    /// give their DeepStack merger's feature.
    fn block(&self, i: usize, x: &Tensor, pass: &VisionPass) -> (Tensor, Option<Tensor>) {
        let x = self.blocks[i].forward(x, &pass.cos, &pass.sin, &pass.frames);
        let tap = self
            .config
            .deepstack_visual_indexes
            .iter()
            .position(|&d| d == i as i64)
            .map(|j| self.deepstack_merger_list[j].forward(&x));
        (x, tap)
    }

    fn merge(&self, x: &Tensor, _pass: &VisionPass) -> Tensor {
        self.merger.forward(x)
    }
}

/// Bilinear (align_corners) taps and weights along one axis, in f32 as transformers:
/// `src = i * (side - 1) / max(size - 1, 1)`, taps `floor` and `floor + 1` clamped.
fn axis_taps(index: &[i64], size: &[i64], side: i64) -> (Vec<[i64; 2]>, Vec<[f32; 2]>) {
    let mut taps = Vec::with_capacity(index.len());
    let mut weights = Vec::with_capacity(index.len());
    for (&i, &n) in index.iter().zip(size) {
        let src = (i as f32 * (side - 1) as f32) / ((n - 1).max(1) as f32);
        let floor = src.floor();
        let mut t = [0i64; 2];
        let mut w = [0f32; 2];
        for o in 0..2 {
            t[o] = (floor as i64 + o as i64).clamp(0, side - 1);
            w[o] = (1.0 - (src - floor - o as f32).abs()).max(0.0);
        }
        taps.push(t);
        weights.push(w);
    }
    (taps, weights)
}
