//! Data parallelism: which rank trains on which part of the global batch, gradient
//! reduction, global sums and gathers, and the optimizer (replicated or sharded).
//!
//! Every rank reads the same data stream (so the data cursor, and a checkpoint, do not
//! depend on the world size) but prepares and trains on its own share only. Losses are
//! normalised by the GLOBAL batch (its token or sequence count) and gradients are SUMMED
//! over ranks, so a step is the step one process would take on the whole batch; the
//! rewards, domains and lengths of all responses are gathered first, so the DRPO
//! statistics are those of the global batch too.

use std::ops::Range;
use std::rc::Rc;

use qoq_dist::{ProcessGroup, ReduceOp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::config::Sharding;
use crate::fsdp::FlatShards;
use crate::optim::{AdamW, OptimConfig};
use crate::sharded::{gather_segments, scatter_segments, segment_buckets, segment_view, ShardedAdamW};
use crate::TrainError;

/// The default gradient bucket, in MiB of fp32: one collective per bucket. 25 MiB is
/// PyTorch DDP's default (`bucket_cap_mb`), large enough to keep NCCL near its bandwidth and
/// small enough that the temporary copy of a bucket stays negligible.
pub const DEFAULT_BUCKET_MIB: usize = 25;

/// Elements of fp32 in a bucket of `mib` MiB.
pub fn bucket_elems(mib: usize) -> i64 {
    (mib << 20) as i64 / 4
}

pub struct DataParallel {
    pub group: Rc<ProcessGroup>,
    /// Elements per gradient bucket (all-reduce / reduce-scatter unit).
    pub bucket_elems: i64,
    /// What each rank keeps 1/N of (`distributed.sharding`; ignored on one rank).
    pub sharding: Sharding,
}

impl DataParallel {
    pub fn single() -> Self {
        Self {
            group: Rc::new(ProcessGroup::single()),
            bucket_elems: bucket_elems(DEFAULT_BUCKET_MIB),
            sharding: Sharding::None,
        }
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world_size()
    }

    pub fn is_main(&self) -> bool {
        self.group.is_main()
    }

    /// The rank that trains on position `pos` of a batch cut into blocks of `block` items
    /// (`block` divisible by the world size): each rank takes a contiguous 1/W of each
    /// block, so every optimizer step (a block) is split evenly.
    pub fn owner(&self, pos: usize, block: usize) -> usize {
        owner(pos, block, self.world())
    }

    /// This rank's positions of a batch of `n` items in blocks of `block`.
    pub fn my_positions(&self, n: usize, block: usize) -> Vec<usize> {
        (0..n).filter(|&p| self.owner(p, block) == self.rank()).collect()
    }

    /// This rank's contiguous share of `n` items split as evenly as possible (validation).
    pub fn my_range(&self, n: usize) -> Range<usize> {
        let (w, r) = (self.world(), self.rank());
        let per = n.div_ceil(w);
        (r * per).min(n)..((r + 1) * per).min(n)
    }

    /// Element-wise sums over ranks.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        if self.world() == 1 {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values).to_device(self.group.collective_device());
        self.group.all_reduce(&t, ReduceOp::Sum)?;
        Ok(Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))?)
    }

    /// Every rank's `value`, in rank order (JSON over a byte all-gather).
    pub fn gather<T: Serialize + DeserializeOwned + Clone>(&self, value: &T) -> Result<Vec<T>, TrainError> {
        if self.world() == 1 {
            return Ok(vec![value.clone()]);
        }
        let bytes = serde_json::to_vec(value).map_err(|e| TrainError::Config(format!("gathering: {e}")))?;
        self.group
            .all_gather_bytes(&bytes)?
            .iter()
            .map(|b| {
                serde_json::from_slice(b)
                    .map_err(|e| TrainError::Config(format!("gathering: a rank sent unreadable data: {e}")))
            })
            .collect()
    }

    /// Rank 0's values of `tensors` on every rank (the same start everywhere).
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<(), TrainError> {
        if self.world() == 1 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for t in tensors {
            let d = t.detach();
            self.group.broadcast(&d, 0)?;
        }
        Ok(())
    }

    /// Sums the gradients of `params` over ranks, in buckets of `bucket_elems` elements
    /// (one flat all-reduce per bucket instead of one per tensor).
    pub fn sum_gradients<'a>(&self, params: impl Iterator<Item = &'a Tensor>) -> Result<(), TrainError> {
        if self.world() == 1 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = params.map(|p| p.grad()).filter(|g| g.defined()).collect();
        let refs: Vec<&Tensor> = grads.iter().collect();
        let sizes: Vec<i64> = grads.iter().map(|g| g.numel() as i64).collect();
        for segments in segment_buckets(&sizes, self.bucket_elems) {
            let len: i64 = segments.iter().map(|s| s.len).sum();
            // A bucket inside one gradient is reduced in place; others through a copy.
            match segment_view(&refs, &segments, len) {
                Some(view) => self.group.all_reduce(&view, ReduceOp::Sum)?,
                None => {
                    let flat = gather_segments(&refs, &segments, len);
                    self.group.all_reduce(&flat, ReduceOp::Sum)?;
                    scatter_segments(&refs, &segments, 0, &flat);
                }
            }
        }
        Ok(())
    }

    /// Fails when the ranks' weights differ (a sum and a sum of squares per rank).
    pub fn check_replicas<'a>(&self, params: impl Iterator<Item = &'a Tensor>) -> Result<(), TrainError> {
        if self.world() == 1 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let (mut s, mut sq) = (0.0, 0.0);
        for p in params {
            // In chunks: a double copy of the embedding would be the largest buffer of the run.
            let flat = p.reshape([-1]);
            let n = flat.numel() as i64;
            for start in (0..n).step_by(1 << 20) {
                let chunk = flat.narrow(0, start, (1 << 20).min(n - start)).to_kind(Kind::Double);
                s += chunk.sum(Kind::Double).double_value(&[]);
                sq += chunk.square().sum(Kind::Double).double_value(&[]);
            }
        }
        let all = self.gather(&[s, sq])?;
        if let Some((r, v)) = all.iter().enumerate().find(|(_, v)| **v != all[0]) {
            return Err(TrainError::Config(format!(
                "the ranks' weights differ: rank {r} has fingerprint {v:?}, rank 0 {:?} (a rank skipped an update or computed differently)",
                all[0]
            )));
        }
        Ok(())
    }
}

fn owner(pos: usize, block: usize, world: usize) -> usize {
    (pos % block) / (block / world)
}

/// Gives every trainable parameter a (zero) gradient, so every rank reduces the same set
/// of tensors even when its share of the batch leaves some parameter untouched.
pub(crate) fn materialize_grads(params: &[(String, Tensor)]) {
    if params.iter().all(|(_, p)| p.grad().defined()) {
        return;
    }
    let total = params.iter().map(|(_, p)| p.sum(Kind::Float) * 0.0).fold(Tensor::from(0f32), |a, b| a + b);
    total.backward();
}

/// AdamW with the whole state on every rank, its moments sharded across ranks (ZeRO-1),
/// or with gradients and parameters sharded too (`fsdp.rs`: ZeRO-2 / 3).
pub(crate) enum Optimizer {
    Replicated(AdamW),
    Sharded(ShardedAdamW),
    Flat(FlatShards),
}

impl Optimizer {
    /// The replicated or ZeRO-1 optimizer of `params` (a [`FlatShards`] is built by the
    /// trainer, which owns the model's casting).
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor)>, dp: &DataParallel) -> Self {
        materialize_grads(&params);
        if dp.sharding == Sharding::Optimizer && dp.world() > 1 {
            Optimizer::Sharded(ShardedAdamW::new(config, params, dp.rank(), dp.world(), dp.bucket_elems))
        } else {
            Optimizer::Replicated(AdamW::new(config, params))
        }
    }

    pub fn config(&self) -> &OptimConfig {
        match self {
            Optimizer::Replicated(o) => &o.config,
            Optimizer::Sharded(o) => &o.config,
            Optimizer::Flat(o) => &o.config,
        }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::Replicated(o) => o.step,
            Optimizer::Sharded(o) => o.step,
            Optimizer::Flat(o) => o.step,
        }
    }

    /// The sharded parameters, when they are (the update's gate).
    pub fn flat(&self) -> Option<&FlatShards> {
        match self {
            Optimizer::Flat(o) => Some(o),
            _ => None,
        }
    }

    pub fn zero_grad(&mut self) {
        let params: Vec<&Tensor> = match self {
            Optimizer::Replicated(o) => o.params().collect(),
            Optimizer::Sharded(o) => o.params().collect(),
            Optimizer::Flat(o) => {
                o.zero_grad();
                return;
            }
        };
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Reduces this rank's gradients over the ranks and updates. Returns the global
    /// gradient norm before clipping.
    pub fn step(&mut self, lr: f64, dp: &DataParallel) -> Result<f64, TrainError> {
        match self {
            Optimizer::Replicated(o) => {
                dp.sum_gradients(o.params())?;
                Ok(o.step(lr))
            }
            Optimizer::Sharded(o) => o.step(lr, &dp.group),
            Optimizer::Flat(o) => o.optimizer_step(lr),
        }
    }

    /// The full moments by name (on rank 0; every rank must call it).
    pub fn state_tensors(&self, dp: &DataParallel) -> Result<Vec<(String, Tensor)>, TrainError> {
        match self {
            Optimizer::Replicated(o) => Ok(o.state_tensors()),
            Optimizer::Sharded(o) => o.state_tensors(&dp.group),
            // Written by each rank (`Trainer::save`).
            Optimizer::Flat(_) => Ok(Vec::new()),
        }
    }

    pub fn load_state(
        &mut self,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        step: u64,
        dp: &DataParallel,
    ) -> Result<(), String> {
        match self {
            Optimizer::Replicated(o) => o.load_state(tensors, step),
            Optimizer::Sharded(o) => o.load_state(tensors, step, dp.world()),
            Optimizer::Flat(o) => o.load_state(tensors, step),
        }
    }

    /// Bytes of AdamW moments this rank holds.
    pub fn state_bytes(&self) -> usize {
        match self {
            Optimizer::Replicated(o) => o.exp_avg.values().chain(o.exp_avg_sq.values()).map(|t| t.numel() * 4).sum(),
            Optimizer::Sharded(o) => o.state_elements() as usize * 4,
            Optimizer::Flat(o) => o.moment_bytes(),
        }
    }

    pub fn params(&self) -> Vec<&Tensor> {
        match self {
            Optimizer::Replicated(o) => o.params().collect(),
            Optimizer::Sharded(o) => o.params().collect(),
            // Sharded: no rank holds the whole weights to compare.
            Optimizer::Flat(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_batch() {
        // 3 ranks, blocks of 6: each rank 2 consecutive positions per block.
        let of_rank = |r: usize| (0..12).filter(|&p| owner(p, 6, 3) == r).collect::<Vec<_>>();
        assert_eq!(of_rank(0), vec![0, 1, 6, 7]);
        assert_eq!(of_rank(1), vec![2, 3, 8, 9]);
        assert_eq!(of_rank(2), vec![4, 5, 10, 11]);
        let dp = DataParallel::single();
        assert_eq!(dp.my_positions(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(dp.my_range(7), 0..7);
    }
}
