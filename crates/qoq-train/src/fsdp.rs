//! Sharded gradients and parameters (`distributed.sharding = "gradients" | "full"`, ZeRO
//! stages 2 and 3, PyTorch FSDP's flat-parameter scheme).
//!
//! The trainable parameters of each update [`Unit`] (the input stage, each decoder layer,
//! the head) form one flat vector, padded to a multiple of the world size W; rank r owns
//! the r-th 1/W of every unit and keeps, for it only, the fp32 master weights, the fp32
//! gradient and the AdamW moments. Per micro-batch, through the [`ParamGate`] the update
//! calls (`qoq_policy::gate`):
//!
//!   - gather(u): all_gather the unit's shards, cast to the compute dtype, as the
//!     parameters' data ("full"; with "gradients" the parameters stay whole);
//!   - release(u): the parameters' data becomes empty again ("full");
//!   - reduce(u): reduce_scatter the unit's gradients (in `model.grad_dtype`), add the
//!     owned part into the fp32 gradient shard, free the whole gradients (and, with
//!     "full", the parameters).
//!
//! The optimizer step is AdamW on the shards (the same elementwise update as
//! [`crate::optim::AdamW`], clipping by the global norm). With "gradients" the updated
//! shards are then all-gathered into every rank's whole parameters; with "full" nothing
//! moves until the next gather. Rollouts and scoring gather the whole model once
//! ([`FlatShards::gather_all`]) and release it afterwards.
//!
//! Frozen parameters stay whole on every rank (they have no master, gradient or moments).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use qoq_dist::{ProcessGroup, ReduceOp};
use qoq_policy::gate::{unit_of, ParamGate, Unit};
use qoq_policy::PolicyError;
use tch::{Device, Kind, Tensor};

use crate::optim::{adamw_update, decays, Decay, OptimConfig};
use crate::sharded::global_norm;
use crate::TrainError;

/// Whether the parameters, besides the gradients and optimizer state, are sharded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// ZeRO-2: gradients and optimizer state sharded, parameters whole.
    Gradients,
    /// ZeRO-3 / FSDP: parameters too.
    Full,
}

struct FlatParam {
    name: String,
    /// The policy's variable (its data is swapped in and out).
    tensor: Tensor,
    shape: Vec<i64>,
    offset: i64,
    numel: i64,
}

struct FlatGroup {
    params: Vec<FlatParam>,
    /// Elements per rank: ceil(total / W).
    part: i64,
    master: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// 1 where the owned element decays.
    decay: Tensor,
}

/// The sharded trainable parameters, their optimizer, and the gate the update drives.
pub(crate) struct FlatShards {
    level: Level,
    group: Rc<ProcessGroup>,
    rank: i64,
    world: i64,
    /// The dtype the model computes in (bf16 or fp32).
    compute: Kind,
    /// The dtype gradients are reduced in.
    reduce: Kind,
    groups: Vec<FlatGroup>,
    by_unit: BTreeMap<Unit, usize>,
    /// With tied embeddings the head's logits use Input's `embed_tokens`.
    head_needs_input: bool,
    gathered: RefCell<Vec<bool>>,
    pub config: OptimConfig,
    /// Optimizer steps taken.
    pub step: u64,
}

impl FlatShards {
    /// `params`: the trainable parameters by name (same order on every rank), still in
    /// fp32 (their values become the masters). `tied`: the model has no `lm_head`.
    /// Afterwards the caller casts the model to `compute` and calls [`Self::release_all`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        level: Level,
        config: OptimConfig,
        params: Vec<(String, Tensor)>,
        tied: bool,
        group: Rc<ProcessGroup>,
        compute: Kind,
        reduce: Kind,
    ) -> Self {
        Self::build(level, config, params, tied, group, compute, reduce, true)
    }

    /// The shards of a model that does not train (the reference model with "full"): each
    /// rank keeps 1/N of it in `compute`, no gradient or moment; [`Self::gather_all`] makes
    /// it whole for its scoring. Call [`Self::release_all`] after.
    pub fn frozen(params: Vec<(String, Tensor)>, tied: bool, group: Rc<ProcessGroup>, compute: Kind) -> Self {
        Self::build(Level::Full, OptimConfig::default(), params, tied, group, compute, compute, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        level: Level,
        config: OptimConfig,
        params: Vec<(String, Tensor)>,
        tied: bool,
        group: Rc<ProcessGroup>,
        compute: Kind,
        reduce: Kind,
        trains: bool,
    ) -> Self {
        let _guard = tch::no_grad_guard();
        // The masters of a model that trains are fp32; a frozen one keeps its dtype.
        let store = if trains { Kind::Float } else { compute };
        let (rank, world) = (group.rank() as i64, group.world_size() as i64);
        let mut by_name: BTreeMap<Unit, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, t) in params {
            by_name.entry(unit_of(&name)).or_default().push((name, t));
        }
        let mut groups = Vec::new();
        let mut by_unit = BTreeMap::new();
        for (unit, members) in by_name {
            let device = members[0].1.device();
            let mut offset = 0;
            let params: Vec<FlatParam> = members
                .into_iter()
                .map(|(name, tensor)| {
                    let numel = tensor.numel() as i64;
                    let p = FlatParam { name, shape: tensor.size(), tensor, offset, numel };
                    offset += numel;
                    p
                })
                .collect();
            let part = (offset + world - 1) / world;
            let owned = |flat: Tensor| flat.narrow(0, rank * part, part).copy();
            let values: Vec<Tensor> = params.iter().map(|p| p.tensor.detach().to_kind(store).reshape([-1])).collect();
            let masks: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    Tensor::full([p.numel], if decays(&p.name, &p.shape) { 1.0 } else { 0.0 }, (Kind::Float, device))
                })
                .collect();
            // No gradient or moments for a frozen model.
            let zeros = || Tensor::zeros([if trains { part } else { 0 }], (Kind::Float, device));
            by_unit.insert(unit, groups.len());
            groups.push(FlatGroup {
                master: owned(padded_flat(values, part * world)),
                decay: if trains { owned(padded_flat(masks, part * world)) } else { zeros() },
                grad: zeros(),
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
                params,
                part,
            });
        }
        let gathered = RefCell::new(vec![true; groups.len()]);
        Self {
            level,
            group,
            rank,
            world,
            compute,
            reduce,
            groups,
            by_unit,
            head_needs_input: tied,
            gathered,
            config,
            step: 0,
        }
    }

    /// Bytes of AdamW moments this rank holds.
    pub fn moment_bytes(&self) -> usize {
        self.groups.iter().map(|g| 2 * g.part as usize * 4).sum()
    }

    /// Every unit's parameters whole (rollouts, scoring, checkpoints), until
    /// [`Self::release_all`].
    pub fn gather_all(&self) -> Result<(), TrainError> {
        for g in 0..self.groups.len() {
            self.gather_group(g, false)?;
        }
        Ok(())
    }

    /// With "full", every unit's parameters leave (only the shards remain); with
    /// "gradients" nothing happens. Also right after construction, once the model is cast
    /// to the compute dtype.
    pub fn release_all(&self) {
        for g in 0..self.groups.len() {
            self.release_group(g);
        }
    }

    fn groups_of(&self, unit: Unit) -> Vec<usize> {
        let mut out: Vec<usize> = self.by_unit.get(&unit).copied().into_iter().collect();
        if unit == Unit::Head && self.head_needs_input {
            out.extend(self.by_unit.get(&Unit::Input).copied());
        }
        out
    }

    fn gather_group(&self, g: usize, backward: bool) -> Result<(), TrainError> {
        let group = &self.groups[g];
        let _guard = tch::no_grad_guard();
        if !self.gathered.borrow()[g] {
            let shard = group.master.to_kind(self.compute);
            let whole = self.group.all_gather(&shard)?.reshape([-1]);
            for p in &group.params {
                p.tensor.shallow_clone().set_data(&whole.narrow(0, p.offset, p.numel).view(p.shape.as_slice()));
            }
            self.gathered.borrow_mut()[g] = true;
        }
        if backward {
            // A gradient freed by the last reduce (empty data) is whole zeros again, for
            // autograd to accumulate into; one never made is left for autograd to make.
            for p in &group.params {
                let grad = p.tensor.grad();
                if grad.defined() && grad.numel() as i64 != p.numel {
                    grad.shallow_clone()
                        .set_data(&Tensor::zeros(p.shape.as_slice(), (p.tensor.kind(), p.tensor.device())));
                }
            }
        }
        Ok(())
    }

    fn release_group(&self, g: usize) {
        if self.level != Level::Full || !self.gathered.borrow()[g] {
            return;
        }
        let _guard = tch::no_grad_guard();
        for p in &self.groups[g].params {
            p.tensor.shallow_clone().set_data(&Tensor::empty([0], (self.compute, p.tensor.device())));
        }
        self.gathered.borrow_mut()[g] = false;
    }

    /// Reduce-scatters the unit's whole gradients into this rank's fp32 shard and frees them.
    fn reduce_group(&self, g: usize) -> Result<(), TrainError> {
        let group = &self.groups[g];
        let _guard = tch::no_grad_guard();
        let device = group.master.device();
        let mut parts: Vec<Tensor> = Vec::with_capacity(group.params.len() + 1);
        for p in &group.params {
            let grad = p.tensor.grad();
            parts.push(if grad.defined() && grad.numel() as i64 == p.numel {
                grad.reshape([-1]).to_kind(self.reduce)
            } else {
                Tensor::zeros([p.numel], (self.reduce, device))
            });
        }
        let flat = padded_flat(parts, group.part * self.world);
        let mine = self.group.reduce_scatter(&flat, ReduceOp::Sum)?;
        drop(flat);
        let _ = group.grad.shallow_clone().g_add_(&mine.to_kind(Kind::Float));
        for p in &group.params {
            let grad = p.tensor.grad();
            if grad.defined() {
                grad.shallow_clone().set_data(&Tensor::empty([0], (grad.kind(), device)));
            }
        }
        self.release_group(g);
        Ok(())
    }

    pub fn zero_grad(&self) {
        for g in &self.groups {
            let _ = g.grad.shallow_clone().zero_();
        }
    }

    /// AdamW on the owned shards at learning rate `lr`; returns the global gradient norm
    /// before clipping (a non-finite norm skips the update).
    pub fn optimizer_step(&mut self, lr: f64) -> Result<f64, TrainError> {
        let _guard = tch::no_grad_guard();
        let sq: f64 =
            self.groups.iter().map(|g| g.grad.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum();
        let device = self.groups.first().map_or(Device::Cpu, |g| g.master.device());
        let norm = global_norm(sq, device, &self.group)?;
        if !norm.is_finite() {
            return Ok(norm);
        }
        let clip = self.config.clip_factor(norm);
        self.step += 1;
        for g in self.groups.iter_mut() {
            adamw_update(
                &mut g.master,
                &mut g.grad,
                clip,
                &mut g.exp_avg,
                &mut g.exp_avg_sq,
                lr,
                Decay::Mask(&g.decay),
                &self.config,
                self.step,
            );
        }
        // "gradients": the whole parameters take the update now; "full": at the next gather.
        if self.level == Level::Gradients {
            self.gathered.borrow_mut().iter_mut().for_each(|v| *v = false);
            self.gather_all()?;
        }
        Ok(norm)
    }

    /// A fresh optimizer (zero moments, step 0) with `config` over the same masters (the
    /// SFT -> RL boundary).
    pub fn reset_optimizer(&mut self, config: OptimConfig) {
        for g in &self.groups {
            let _ = g.exp_avg.shallow_clone().zero_();
            let _ = g.exp_avg_sq.shallow_clone().zero_();
        }
        self.config = config;
        self.step = 0;
    }

    /// Each rank's share of the checkpoint: the whole fp32 masters and moments of the units
    /// it writes (unit k goes to rank k mod W), assembled on their writer one unit at a
    /// time; nothing on a rank exceeds one unit beyond its share. Every rank must call it.
    /// Returns (weights, moments) by name, on the CPU.
    pub fn checkpoint_share(&self) -> Result<(NamedTensors, NamedTensors), TrainError> {
        let _guard = tch::no_grad_guard();
        let (mut weights, mut moments) = (Vec::new(), Vec::new());
        for (k, g) in self.groups.iter().enumerate() {
            let writer = k % self.world as usize;
            for (prefix, shard) in [("", &g.master), ("exp_avg.", &g.exp_avg), ("exp_avg_sq.", &g.exp_avg_sq)] {
                if let Some(whole) = self.group.gather(shard, writer)? {
                    let whole = whole.reshape([-1]).to_device(Device::Cpu);
                    for p in &g.params {
                        let t = whole.narrow(0, p.offset, p.numel).view(p.shape.as_slice()).copy();
                        let out = if prefix.is_empty() { &mut weights } else { &mut moments };
                        out.push((format!("{prefix}{}", p.name), t));
                    }
                }
            }
        }
        Ok((weights, moments))
    }

    /// Each trainable parameter's name, the rank that writes it to a checkpoint, and its
    /// elements.
    pub fn writers(&self) -> Vec<(String, usize, i64)> {
        let w = self.world as usize;
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(k, g)| g.params.iter().map(move |p| (p.name.clone(), k % w, p.numel)))
            .collect()
    }

    /// Takes this rank's parts of full moments saved by name (by any optimizer, any world
    /// size).
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for g in self.groups.iter_mut() {
            for (prefix, target) in [("exp_avg", &mut g.exp_avg), ("exp_avg_sq", &mut g.exp_avg_sq)] {
                let mut parts = Vec::new();
                for p in &g.params {
                    let key = format!("{prefix}.{}", p.name);
                    let t = tensors
                        .get(&key)
                        .ok_or_else(|| format!("the optimizer state has no `{key}` (was the freezing changed?)"))?;
                    if t.size() != p.shape {
                        return Err(format!("`{key}` has shape {:?}, the parameter {:?}", t.size(), p.shape));
                    }
                    parts.push(t.to_device(target.device()).to_kind(Kind::Float).reshape([-1]));
                }
                target.copy_(&padded_flat(parts, g.part * self.world).narrow(0, self.rank * g.part, g.part));
            }
        }
        self.step = step;
        Ok(())
    }
}

pub(crate) type NamedTensors = Vec<(String, Tensor)>;

/// A unit's parameters (or their gradients, moments) as one flat vector, zero-padded to
/// `padded` elements (the world size's multiple), in the dtype of the first.
fn padded_flat(mut parts: Vec<Tensor>, padded: i64) -> Tensor {
    let used: i64 = parts.iter().map(|t| t.numel() as i64).sum();
    let (kind, device) = (parts[0].kind(), parts[0].device());
    parts.push(Tensor::zeros([padded - used], (kind, device)));
    Tensor::cat(&parts, 0)
}

impl ParamGate for FlatShards {
    fn gather(&self, unit: Unit, backward: bool) -> Result<(), PolicyError> {
        for g in self.groups_of(unit) {
            self.gather_group(g, backward).map_err(gate_error)?;
        }
        Ok(())
    }

    fn release(&self, unit: Unit) -> Result<(), PolicyError> {
        for g in self.groups_of(unit) {
            self.release_group(g);
        }
        Ok(())
    }

    fn reduce(&self, unit: Unit) -> Result<(), PolicyError> {
        for g in self.groups_of(unit) {
            self.reduce_group(g).map_err(gate_error)?;
        }
        Ok(())
    }
}

fn gate_error(e: TrainError) -> PolicyError {
    PolicyError::Gate(e.to_string())
}
