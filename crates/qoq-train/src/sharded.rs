//! AdamW with its state sharded across data-parallel ranks (ZeRO stage 1).
//!
//! The trainable parameters, in name order, form one flat vector cut into buckets of
//! `bucket_elems` elements (a large matrix spans several buckets, so no collective and no
//! temporary is larger than a bucket). Each bucket (padded to a multiple of the world size W) is
//! split in W equal parts; rank r owns part r of every bucket and keeps the AdamW moments
//! of those elements only (2N/W floats instead of 2N). One optimizer step:
//!
//!   1. reduce_scatter the flat gradients: rank r receives the summed gradient of its parts
//!   2. global grad norm: all_reduce of the squared sums of the parts (clipping as PyTorch)
//!   3. AdamW on the owned parts (the same elementwise update as [`crate::optim::AdamW`])
//!   4. all_gather the updated parts into every rank's parameters
//!
//! The weights themselves stay whole on every rank (they are the fp32 master weights: the
//! policy computes in fp32). Checkpoints hold the full moments by parameter name, the
//! format [`crate::optim::AdamW`] writes, so a run resumes with or without sharding and
//! with any world size.

use std::collections::BTreeMap;

use qoq_dist::{ProcessGroup, ReduceOp};
use tch::{Kind, Tensor};

use crate::optim::{adamw_update, decays, Decay, OptimConfig};
use crate::TrainError;

/// A run of one parameter's elements inside a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index of the parameter.
    pub param: usize,
    /// First element, in the parameter's flat view.
    pub offset: i64,
    pub len: i64,
}

/// The flat vector of parameters of `sizes` elements, cut into buckets of `bucket_elems`
/// (the last shorter), each as the parameter segments it covers.
pub fn segment_buckets(sizes: &[i64], bucket_elems: i64) -> Vec<Vec<Segment>> {
    let bucket_elems = bucket_elems.max(1);
    let mut out: Vec<Vec<Segment>> = Vec::new();
    let mut current: Vec<Segment> = Vec::new();
    let mut filled = 0;
    for (param, &n) in sizes.iter().enumerate() {
        let mut offset = 0;
        while offset < n {
            let len = (n - offset).min(bucket_elems - filled);
            current.push(Segment { param, offset, len });
            offset += len;
            filled += len;
            if filled == bucket_elems {
                out.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The segments of `tensors` as one flat f32 vector, zero-padded to `padded` elements. A
/// single segment that needs no padding comes back as a view (writes reach the tensor).
pub fn gather_segments(tensors: &[&Tensor], segments: &[Segment], padded: i64) -> Tensor {
    if let Some(v) = segment_view(tensors, segments, padded) {
        return v;
    }
    let mut parts: Vec<Tensor> = segments
        .iter()
        .map(|s| tensors[s.param].reshape([-1]).narrow(0, s.offset, s.len).to_kind(Kind::Float))
        .collect();
    let len: i64 = segments.iter().map(|s| s.len).sum();
    if padded > len {
        parts.push(Tensor::zeros([padded - len], (Kind::Float, tensors[segments[0].param].device())));
    }
    Tensor::cat(&parts, 0)
}

/// The bucket as a view of its one tensor: a single unpadded segment of a contiguous f32
/// tensor (a bucket inside a large matrix).
pub fn segment_view(tensors: &[&Tensor], segments: &[Segment], padded: i64) -> Option<Tensor> {
    match segments {
        [only]
            if only.len == padded
                && tensors[only.param].kind() == Kind::Float
                && tensors[only.param].is_contiguous() =>
        {
            Some(tensors[only.param].view([-1]).narrow(0, only.offset, only.len))
        }
        _ => None,
    }
}

/// Copies `values` (elements `start..` of the bucket's flat vector) into the segments of
/// `tensors`; what falls in the padding is dropped.
pub fn scatter_segments(tensors: &[&Tensor], segments: &[Segment], start: i64, values: &Tensor) {
    let end = start + values.numel() as i64;
    let mut at = 0;
    for s in segments {
        let (lo, hi) = (start.max(at), end.min(at + s.len));
        if lo < hi {
            let t = tensors[s.param];
            t.view([-1])
                .narrow(0, s.offset + lo - at, hi - lo)
                .copy_(&values.narrow(0, lo - start, hi - lo).to_kind(t.kind()));
        }
        at += s.len;
    }
}

struct Bucket {
    segments: Vec<Segment>,
    /// Elements of each rank's part (the padded length / W).
    part: i64,
    /// 1 where the owned part's element decays, 0 where not.
    decay: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct ShardedAdamW {
    pub config: OptimConfig,
    params: Vec<(String, Tensor)>,
    buckets: Vec<Bucket>,
    rank: i64,
    /// Optimizer steps taken.
    pub step: u64,
}

impl ShardedAdamW {
    /// `params`: the trainable parameters by name, in the same order on every rank.
    pub fn new(
        config: OptimConfig,
        params: Vec<(String, Tensor)>,
        rank: usize,
        world: usize,
        bucket_elems: i64,
    ) -> Self {
        let _guard = tch::no_grad_guard();
        let w = world as i64;
        let sizes: Vec<i64> = params.iter().map(|(_, t)| t.numel() as i64).collect();
        let masks: Vec<Tensor> = params
            .iter()
            .map(|(n, t)| {
                Tensor::full(
                    [t.numel() as i64],
                    if decays(n, &t.size()) { 1.0 } else { 0.0 },
                    (Kind::Float, t.device()),
                )
            })
            .collect();
        let mask_refs: Vec<&Tensor> = masks.iter().collect();
        let buckets = segment_buckets(&sizes, bucket_elems)
            .into_iter()
            .map(|segments| {
                let len: i64 = segments.iter().map(|s| s.len).sum();
                let part = (len + w - 1) / w;
                let device = params[segments[0].param].1.device();
                let decay = gather_segments(&mask_refs, &segments, part * w).narrow(0, rank as i64 * part, part).copy();
                let zeros = || Tensor::zeros([part], (Kind::Float, device));
                Bucket { segments, part, decay, exp_avg: zeros(), exp_avg_sq: zeros() }
            })
            .collect();
        Self { config, params, buckets, rank: rank as i64, step: 0 }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, t)| t)
    }

    /// Elements of moments this rank holds (for the memory report).
    pub fn state_elements(&self) -> i64 {
        self.buckets.iter().map(|b| 2 * b.part).sum()
    }

    /// One update at learning rate `lr` with the gradients of this rank's share of the
    /// batch (summed over ranks here). Returns the global gradient norm before clipping;
    /// a non-finite norm skips the update.
    pub fn step(&mut self, lr: f64, group: &ProcessGroup) -> Result<f64, TrainError> {
        let _guard = tch::no_grad_guard();
        // 1. reduce_scatter: the summed gradient of the owned part of each bucket, written
        // back into this rank's slice of the .grad tensors (no second gradient copy).
        let w = group.world_size() as i64;
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| grad_or_zeros(p)).collect();
        let grad_refs: Vec<&Tensor> = grads.iter().collect();
        let mut sq = 0.0;
        for b in &self.buckets {
            let part = group.reduce_scatter(&gather_segments(&grad_refs, &b.segments, b.part * w), ReduceOp::Sum)?;
            sq += part.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
            scatter_segments(&grad_refs, &b.segments, self.rank * b.part, &part);
        }
        // 2. the global norm.
        let device = self.buckets.first().map_or(tch::Device::Cpu, |b| b.decay.device());
        let norm = global_norm(sq, device, group)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let clip = self.config.clip_factor(norm);
        self.step += 1;
        // 3-4. update the owned parts, then gather every part into every rank's weights.
        let weights: Vec<Tensor> = self.params.iter().map(|(_, p)| p.detach()).collect();
        let weight_refs: Vec<&Tensor> = weights.iter().collect();
        for b in self.buckets.iter_mut() {
            // Views of the weights and gradients for a bucket inside one parameter (updated
            // in place; the gather then writes the same values back), else copies.
            let mut part = gather_segments(&weight_refs, &b.segments, b.part * w).narrow(0, self.rank * b.part, b.part);
            let mut g = gather_segments(&grad_refs, &b.segments, b.part * w).narrow(0, self.rank * b.part, b.part);
            adamw_update(
                &mut part,
                &mut g,
                clip,
                &mut b.exp_avg,
                &mut b.exp_avg_sq,
                lr,
                Decay::Mask(&b.decay),
                &self.config,
                self.step,
            );
            let gathered = group.all_gather(&part)?.reshape([-1]);
            scatter_segments(&weight_refs, &b.segments, 0, &gathered);
        }
        Ok(norm)
    }

    /// The full moments by parameter name (`exp_avg.NAME`, `exp_avg_sq.NAME`), assembled
    /// on rank 0 for its checkpoint (empty on the other ranks). Every rank must call it.
    pub fn state_tensors(&self, group: &ProcessGroup) -> Result<Vec<(String, Tensor)>, TrainError> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        let w = group.world_size() as i64;
        for (prefix, pick) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
            let full: Vec<Tensor> = if group.is_main() {
                self.params.iter().map(|(_, p)| Tensor::zeros_like(p).to_kind(Kind::Float)).collect()
            } else {
                Vec::new()
            };
            let full_refs: Vec<&Tensor> = full.iter().collect();
            for b in &self.buckets {
                let part = if pick == 0 { &b.exp_avg } else { &b.exp_avg_sq };
                // One bucket at a time, to rank 0 only: the other ranks hold nothing extra.
                if let Some(gathered) = group.gather(part, 0)? {
                    let gathered = gathered.reshape([-1]);
                    debug_assert_eq!(gathered.numel() as i64, b.part * w);
                    scatter_segments(&full_refs, &b.segments, 0, &gathered);
                }
            }
            for ((name, _), t) in self.params.iter().zip(full) {
                out.push((format!("{prefix}.{name}"), t));
            }
        }
        Ok(out)
    }

    /// Takes this rank's parts of full moments saved by name (by this optimizer or by
    /// [`crate::optim::AdamW`], with any world size).
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64, world: usize) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let w = world as i64;
        for (prefix, pick) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
            let mut saved = Vec::with_capacity(self.params.len());
            for (name, p) in &self.params {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| format!("the optimizer state has no `{key}` (was the freezing changed?)"))?;
                if t.size() != p.size() {
                    return Err(format!("`{key}` has shape {:?}, the parameter {:?}", t.size(), p.size()));
                }
                saved.push(t.to_device(p.device()).to_kind(Kind::Float).contiguous());
            }
            let saved_refs: Vec<&Tensor> = saved.iter().collect();
            for b in &mut self.buckets {
                let whole = gather_segments(&saved_refs, &b.segments, b.part * w);
                let target = if pick == 0 { &mut b.exp_avg } else { &mut b.exp_avg_sq };
                target.copy_(&whole.narrow(0, self.rank * b.part, b.part));
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The gradient norm over every rank from this rank's sum of squares `sq` (of the parts it
/// owns): one all_reduce on `device`.
pub(crate) fn global_norm(sq: f64, device: tch::Device, group: &ProcessGroup) -> Result<f64, TrainError> {
    let total = Tensor::from_slice(&[sq]).to_device(device);
    group.all_reduce(&total, ReduceOp::Sum)?;
    Ok(total.double_value(&[0]).sqrt())
}

fn grad_or_zeros(p: &Tensor) -> Tensor {
    let g = p.grad();
    if g.defined() {
        g
    } else {
        p.zeros_like()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_element_once() {
        let seg = |param, offset, len| Segment { param, offset, len };
        assert_eq!(
            segment_buckets(&[3, 3, 13, 1], 6),
            vec![
                vec![seg(0, 0, 3), seg(1, 0, 3)],
                vec![seg(2, 0, 6)],
                vec![seg(2, 6, 6)],
                vec![seg(2, 12, 1), seg(3, 0, 1)],
            ]
        );
        assert_eq!(segment_buckets(&[1, 1, 1], 100), vec![vec![seg(0, 0, 1), seg(1, 0, 1), seg(2, 0, 1)]]);
        assert!(segment_buckets(&[], 5).is_empty());
    }

    #[test]
    fn segments_gather_and_scatter() {
        let a = Tensor::arange(4, (Kind::Float, tch::Device::Cpu));
        let b = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]) + 10.0;
        let segs = [Segment { param: 0, offset: 2, len: 2 }, Segment { param: 1, offset: 0, len: 3 }];
        let flat = gather_segments(&[&a, &b], &segs, 6);
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), vec![2.0, 3.0, 10.0, 11.0, 12.0, 0.0]);
        // A lone unpadded segment is a view: writes reach the tensor.
        let view = gather_segments(&[&a, &b], &[Segment { param: 1, offset: 3, len: 3 }], 3);
        let _ = view.shallow_clone().fill_(-1.0);
        assert_eq!(Vec::<f32>::try_from(b.view([-1])).unwrap(), vec![10.0, 11.0, 12.0, -1.0, -1.0, -1.0]);
        scatter_segments(&[&a, &b], &segs, 1, &Tensor::from_slice(&[7.0f32, 8.0, 9.0]));
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![0.0, 1.0, 2.0, 7.0]);
        assert_eq!(Vec::<f32>::try_from(b.view([-1])).unwrap(), vec![8.0, 9.0, 12.0, -1.0, -1.0, -1.0]);
    }

    /// A group of one: the sharded optimizer is plain AdamW, to float rounding.
    #[test]
    fn one_rank_matches_adamw() {
        let config = OptimConfig { lr: 1e-2, weight_decay: 0.1, grad_clip: 0.5, ..Default::default() };
        let make = || {
            vec![
                (
                    "a.weight".to_string(),
                    Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5]).view([2, 3]).set_requires_grad(true),
                ),
                ("a.bias".to_string(), Tensor::from_slice(&[0.1f32, -0.2]).set_requires_grad(true)),
                ("b.norm.weight".to_string(), Tensor::from_slice(&[1.0f32, 1.0, 1.0]).set_requires_grad(true)),
            ]
        };
        let (pa, pb) = (make(), make());
        let share =
            |v: &Vec<(String, Tensor)>| v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<Vec<_>>();
        let mut plain = crate::optim::AdamW::new(config.clone(), share(&pa));
        let mut sharded = ShardedAdamW::new(config, share(&pb), 0, 1, 4);
        let group = ProcessGroup::single();
        for step in 0..3 {
            for params in [&pa, &pb] {
                let loss = params
                    .iter()
                    .map(|(_, t)| (t * t * (step as f64 + 1.0)).sum(Kind::Float))
                    .fold(Tensor::from(0f32), |a, b| a + b);
                loss.backward();
            }
            let n1 = plain.step(1e-2);
            let n2 = sharded.step(1e-2, &group).unwrap();
            assert!((n1 - n2).abs() < 1e-9, "{n1} vs {n2}");
            plain.zero_grad();
            for (_, p) in &pb {
                let _ = p.grad().zero_();
            }
        }
        for ((_, a), (_, b)) in pa.iter().zip(&pb) {
            assert!(a.allclose(b, 1e-6, 1e-7, false), "{a} vs {b}");
        }
        let saved: BTreeMap<String, Tensor> = sharded.state_tensors(&group).unwrap().into_iter().collect();
        let plain_saved: BTreeMap<String, Tensor> = plain.state_tensors().into_iter().collect();
        assert_eq!(saved.keys().collect::<Vec<_>>(), plain_saved.keys().collect::<Vec<_>>());
        for (k, v) in &saved {
            assert!(v.allclose(&plain_saved[k], 1e-6, 1e-9, false), "{k}");
        }
    }
}
