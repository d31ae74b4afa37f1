//! AdamW with its state sharded across data-parallel ranks (ZeRO stage 1).
//!
//! The trainable parameters, in name order, are cut into buckets of about `bucket_elems`
//! elements. Each bucket's flat vector (padded to a multiple of the world size W) is
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
use std::ops::Range;

use qoq_dist::{ProcessGroup, ReduceOp};
use tch::{Kind, Tensor};

use crate::optim::{adamw_update, decays, Decay, OptimConfig};
use crate::TrainError;

struct Bucket {
    /// Indices into `params`.
    params: Range<usize>,
    /// Elements of the bucket's parameters.
    len: i64,
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

/// Consecutive runs of parameters (by element count) of about `bucket_elems` elements; a
/// parameter larger than that is a bucket of its own.
pub fn bucket_ranges(sizes: &[i64], bucket_elems: i64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut filled = 0;
    for (i, &n) in sizes.iter().enumerate() {
        if filled > 0 && filled + n > bucket_elems {
            out.push(start..i);
            start = i;
            filled = 0;
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The flat concatenation of `tensors` (as f32), zero-padded to `padded` elements. A
/// single contiguous f32 tensor that needs no padding (a large matrix alone in its bucket)
/// comes back as a view of itself, not a copy.
fn flat(tensors: impl Iterator<Item = Tensor>, padded: i64) -> Tensor {
    let parts: Vec<Tensor> = tensors.map(|t| t.to_kind(Kind::Float).reshape([-1])).collect();
    if parts.len() == 1 && parts[0].numel() as i64 == padded && parts[0].is_contiguous() {
        return parts.into_iter().next().expect("one part");
    }
    let v = Tensor::cat(&parts, 0);
    let missing = padded - v.numel() as i64;
    if missing > 0 {
        Tensor::cat(&[v, Tensor::zeros([missing], (Kind::Float, parts[0].device()))], 0)
    } else {
        v
    }
}

impl ShardedAdamW {
    /// `params`: the trainable parameters by name, in the same order on every rank.
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor)>, rank: usize, world: usize, bucket_elems: i64) -> Self {
        let _guard = tch::no_grad_guard();
        let w = world as i64;
        let sizes: Vec<i64> = params.iter().map(|(_, t)| t.numel() as i64).collect();
        let buckets = bucket_ranges(&sizes, bucket_elems.max(1))
            .into_iter()
            .map(|range| {
                let len: i64 = sizes[range.clone()].iter().sum();
                let part = (len + w - 1) / w;
                let device = params[range.start].1.device();
                let mask = flat(
                    params[range.clone()].iter().map(|(n, t)| {
                        let d = if decays(n, &t.size()) { 1.0 } else { 0.0 };
                        Tensor::full([t.numel() as i64], d, (Kind::Float, device))
                    }),
                    part * w,
                );
                let decay = mask.narrow(0, rank as i64 * part, part).copy();
                let zeros = || Tensor::zeros([part], (Kind::Float, device));
                Bucket { params: range, len, part, decay, exp_avg: zeros(), exp_avg_sq: zeros() }
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
        let mut sq = 0.0;
        for b in &self.buckets {
            let g = flat(self.params[b.params.clone()].iter().map(|(_, p)| grad_or_zeros(p)), b.part * w);
            let part = group.reduce_scatter(&g, ReduceOp::Sum)?;
            sq += part.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
            write_part(&self.params[b.params.clone()], self.rank * b.part, &part)?;
        }
        // 2. the global norm.
        let total = Tensor::from_slice(&[sq]).to_device(self.buckets.first().map_or(tch::Device::Cpu, |b| b.decay.device()));
        group.all_reduce(&total, ReduceOp::Sum)?;
        let norm = total.double_value(&[0]).sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        let clip = if self.config.grad_clip > 0.0 { (self.config.grad_clip / (norm + 1e-6)).min(1.0) } else { 1.0 };
        self.step += 1;
        // 3-4. update the owned parts, then gather every part into every rank's weights.
        for b in self.buckets.iter_mut() {
            // A view of the weights for a bucket of one parameter (updated in place, then
            // overwritten by the gather with the same values), else a copy.
            let whole = flat(self.params[b.params.clone()].iter().map(|(_, p)| p.detach()), b.part * w);
            let mut part = whole.narrow(0, self.rank * b.part, b.part);
            let g = flat(self.params[b.params.clone()].iter().map(|(_, p)| grad_or_zeros(p)), b.part * w).narrow(0, self.rank * b.part, b.part);
            let mut g = g;
            adamw_update(&mut part, &mut g, clip, &mut b.exp_avg, &mut b.exp_avg_sq, lr, Decay::Mask(&b.decay), &self.config, self.step);
            let gathered = group.all_gather(&part)?.reshape([-1]);
            let mut offset = 0;
            for (_, p) in &mut self.params[b.params.clone()] {
                let n = p.numel() as i64;
                p.copy_(&gathered.narrow(0, offset, n).view(p.size().as_slice()).to_kind(p.kind()));
                offset += n;
            }
            debug_assert_eq!(offset, b.len);
        }
        Ok(norm)
    }

    /// The full moments by parameter name (`exp_avg.NAME`, `exp_avg_sq.NAME`), assembled
    /// on rank 0 for its checkpoint (empty on the other ranks). Every rank must call it.
    pub fn state_tensors(&self, group: &ProcessGroup) -> Result<Vec<(String, Tensor)>, TrainError> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for (prefix, pick) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
            for b in &self.buckets {
                let part = if pick == 0 { &b.exp_avg } else { &b.exp_avg_sq };
                // One bucket at a time, to rank 0 only: the other ranks hold nothing extra.
                let Some(gathered) = group.gather(part, 0)? else { continue };
                let gathered = gathered.reshape([-1]);
                let mut offset = 0;
                for (name, p) in &self.params[b.params.clone()] {
                    let n = p.numel() as i64;
                    out.push((format!("{prefix}.{name}"), gathered.narrow(0, offset, n).view(p.size().as_slice()).copy()));
                    offset += n;
                }
            }
        }
        Ok(out)
    }

    /// Takes this rank's parts of full moments saved by name (by this optimizer or by
    /// [`crate::optim::AdamW`], with any world size).
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64, world: usize) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let w = world as i64;
        for b in &mut self.buckets {
            for (prefix, target) in [("exp_avg", &mut b.exp_avg), ("exp_avg_sq", &mut b.exp_avg_sq)] {
                let mut parts = Vec::new();
                for (name, p) in &self.params[b.params.clone()] {
                    let key = format!("{prefix}.{name}");
                    let saved = tensors.get(&key).ok_or_else(|| format!("the optimizer state has no `{key}` (was the freezing changed?)"))?;
                    if saved.size() != p.size() {
                        return Err(format!("`{key}` has shape {:?}, the parameter {:?}", saved.size(), p.size()));
                    }
                    parts.push(saved.to_device(p.device()));
                }
                let whole = flat(parts.into_iter(), b.part * w);
                target.copy_(&whole.narrow(0, self.rank * b.part, b.part));
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Copies `values` (elements `start..` of the bucket's flat vector) into the gradients of
/// the bucket's parameters `params`; padding past the last parameter is dropped.
fn write_part(params: &[(String, Tensor)], start: i64, values: &Tensor) -> Result<(), TrainError> {
    let end = start + values.numel() as i64;
    let mut offset = 0;
    for (name, p) in params {
        let n = p.numel() as i64;
        let (lo, hi) = (start.max(offset), end.min(offset + n));
        if lo < hi {
            let g = p.grad();
            if !g.defined() || !g.is_contiguous() {
                return Err(TrainError::Config(format!("sharded optimizer: the gradient of {name} is missing or not contiguous")));
            }
            g.view([-1]).narrow(0, lo - offset, hi - lo).copy_(&values.narrow(0, lo - start, hi - lo));
        }
        offset += n;
    }
    Ok(())
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
    fn buckets_cover_every_parameter_once() {
        assert_eq!(bucket_ranges(&[3, 3, 3, 10, 1], 6), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(bucket_ranges(&[1, 1, 1], 100), vec![0..3]);
        assert_eq!(bucket_ranges(&[], 5), Vec::<Range<usize>>::new());
    }

    /// A group of one: the sharded optimizer is plain AdamW, to float rounding.
    #[test]
    fn one_rank_matches_adamw() {
        let config = OptimConfig { lr: 1e-2, weight_decay: 0.1, grad_clip: 0.5, ..Default::default() };
        let make = || {
            vec![
                ("a.weight".to_string(), Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5]).view([2, 3]).set_requires_grad(true)),
                ("a.bias".to_string(), Tensor::from_slice(&[0.1f32, -0.2]).set_requires_grad(true)),
                ("b.norm.weight".to_string(), Tensor::from_slice(&[1.0f32, 1.0, 1.0]).set_requires_grad(true)),
            ]
        };
        let (pa, pb) = (make(), make());
        let share = |v: &Vec<(String, Tensor)>| v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<Vec<_>>();
        let mut plain = crate::optim::AdamW::new(config.clone(), share(&pa));
        let mut sharded = ShardedAdamW::new(config, share(&pb), 0, 1, 4);
        let group = ProcessGroup::single();
        for step in 0..3 {
            for params in [&pa, &pb] {
                let loss = params.iter().map(|(_, t)| (t * t * (step as f64 + 1.0)).sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
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
