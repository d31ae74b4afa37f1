//! AdamW with its moments held by us (tch's C++ optimizer hides them, so it cannot be
//! checkpointed), parameter groups without weight decay for norms and biases, gradient-norm
//! clipping, and the learning-rate schedules.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected
//! moments, eps added after the square root).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    /// The cosine schedule decays to lr x min_lr_ratio.
    pub min_lr_ratio: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 1e-2,
            grad_clip: 1.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// lr after a linear warmup.
    Constant,
    /// Linear warmup, then cosine decay to min_lr_ratio x lr at the last step.
    Cosine,
}

impl OptimConfig {
    /// The factor gradients of global norm `norm` are scaled by: PyTorch's
    /// `clip_grad_norm_` (max_norm / (norm + 1e-6), at most 1); 1 with `grad_clip = 0`.
    pub fn clip_factor(&self, norm: f64) -> f64 {
        if self.grad_clip > 0.0 {
            (self.grad_clip / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        }
    }

    pub fn validate(&self, table: &str) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("{table}.lr must be positive, got {}", self.lr));
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(format!("{table}.betas must each be in [0, 1), got {:?}", self.betas));
        }
        if self.eps.is_nan() || self.eps <= 0.0 || self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return Err(format!("{table}: eps must be positive, weight_decay and grad_clip non-negative"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("{table}.min_lr_ratio must be in [0, 1], got {}", self.min_lr_ratio));
        }
        Ok(())
    }

    /// Learning rate of optimizer step `step` (0-based) of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
            }
        }
    }
}

/// Whether a parameter gets weight decay: matrices do; norms, biases and other vectors
/// do not (the usual AdamW grouping).
pub fn decays(name: &str, shape: &[i64]) -> bool {
    shape.len() >= 2 && !name.ends_with(".bias") && !name.contains("norm")
}

/// AdamW over named parameters; the state is plain tensors so it can be saved.
#[derive(Debug)]
pub struct AdamW {
    pub config: OptimConfig,
    params: Vec<(String, Tensor, bool)>,
    /// First and second moments, by parameter name.
    pub exp_avg: BTreeMap<String, Tensor>,
    pub exp_avg_sq: BTreeMap<String, Tensor>,
    /// Optimizer steps taken.
    pub step: u64,
}

impl AdamW {
    /// `params`: the trainable parameters (requires_grad) by name.
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor)>) -> Self {
        let params: Vec<(String, Tensor, bool)> = params
            .into_iter()
            .map(|(n, t)| {
                let decay = decays(&n, &t.size());
                (n, t, decay)
            })
            .collect();
        let zeros = |t: &Tensor| Tensor::zeros_like(&t.detach()).to_kind(Kind::Float);
        let exp_avg = params.iter().map(|(n, t, _)| (n.clone(), zeros(t))).collect();
        let exp_avg_sq = params.iter().map(|(n, t, _)| (n.clone(), zeros(t))).collect();
        Self { config, params, exp_avg, exp_avg_sq, step: 0 }
    }

    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, t, _)| t)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _, _)| n.as_str())
    }

    /// Parameters with and without weight decay (counts of elements).
    pub fn group_sizes(&self) -> (i64, i64) {
        self.params.iter().fold(
            (0, 0),
            |(d, n), (_, t, decay)| if *decay { (d + t.numel() as i64, n) } else { (d, n + t.numel() as i64) },
        )
    }

    pub fn zero_grad(&mut self) {
        for (_, t, _) in &mut self.params {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The global L2 norm of the gradients (before clipping).
    pub fn grad_norm(&self) -> f64 {
        let _guard = tch::no_grad_guard();
        let mut total = 0.0;
        for (_, t, _) in &self.params {
            let g = t.grad();
            if g.defined() {
                total += g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
            }
        }
        total.sqrt()
    }

    /// One update at learning rate `lr`: clips the gradients to `grad_clip` (PyTorch's
    /// `clip_grad_norm_`), then AdamW. Returns the gradient norm before clipping. A
    /// non-finite norm skips the update (the moments are left untouched).
    pub fn step(&mut self, lr: f64) -> f64 {
        let norm = self.grad_norm();
        if !norm.is_finite() {
            return norm;
        }
        let _guard = tch::no_grad_guard();
        let clip = self.config.clip_factor(norm);
        self.step += 1;
        for (name, p, decay) in &mut self.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let m = self.exp_avg.get_mut(name.as_str()).expect("state for every parameter");
            let v = self.exp_avg_sq.get_mut(name.as_str()).expect("state for every parameter");
            let decay = if *decay { Decay::All } else { Decay::None };
            let mut g = if g.kind() == Kind::Float { g } else { g.to_kind(Kind::Float) };
            adamw_update(p, &mut g, clip, m, v, lr, decay, &self.config, self.step);
        }
        norm
    }
}

/// Which elements of a tensor get weight decay.
pub(crate) enum Decay<'a> {
    None,
    All,
    /// 1 where decayed, 0 where not (a flat shard spanning several parameters).
    Mask(&'a Tensor),
}

/// One AdamW update of `p` in place (PyTorch's `torch.optim.AdamW`, step number `step`
/// counted from 1): the gradient scaled by `clip` (in place), decoupled weight decay, then
/// the bias-corrected moments. (An all-in-place form with torch's `lerp_` computes the same
/// losses but, with `train`'s allocator settings, its different allocation order grew the
/// demo's peak RSS from 3.0 to 4.5 GB; this form is kept.)
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_update(
    p: &mut Tensor,
    g: &mut Tensor,
    clip: f64,
    m: &mut Tensor,
    v: &mut Tensor,
    lr: f64,
    decay: Decay<'_>,
    config: &OptimConfig,
    step: u64,
) {
    let [b1, b2] = config.betas;
    let bias1 = 1.0 - b1.powi(step as i32);
    let bias2 = 1.0 - b2.powi(step as i32);
    if clip != 1.0 {
        let _ = g.g_mul_scalar_(clip);
    }
    if config.weight_decay != 0.0 {
        match decay {
            Decay::None => {}
            Decay::All => {
                let _ = p.g_mul_scalar_(1.0 - lr * config.weight_decay);
            }
            Decay::Mask(mask) => {
                let mut factor = mask * (-lr * config.weight_decay);
                let _ = factor.g_add_scalar_(1.0);
                let _ = p.g_mul_(&factor);
            }
        }
    }
    let g = &*g;
    let _ = m.g_mul_scalar_(b1).g_add_(&(g * (1.0 - b1)));
    let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
    let denom = v.sqrt() / bias2.sqrt() + config.eps;
    let update = (&*m / denom) * (lr / bias1);
    let _ = p.g_sub_(&update.to_kind(p.kind()));
}

impl AdamW {
    /// Moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (n, t) in &self.exp_avg {
            out.push((format!("exp_avg.{n}"), t.shallow_clone()));
        }
        for (n, t) in &self.exp_avg_sq {
            out.push((format!("exp_avg_sq.{n}"), t.shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`Self::state_tensors`]; every trainable parameter must
    /// have both, with its shape.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (prefix, map) in [("exp_avg", &mut self.exp_avg), ("exp_avg_sq", &mut self.exp_avg_sq)] {
            for (name, t) in map.iter_mut() {
                let key = format!("{prefix}.{name}");
                let saved = tensors
                    .get(&key)
                    .ok_or_else(|| format!("the optimizer state has no `{key}` (was the freezing changed?)"))?;
                if saved.size() != t.size() {
                    return Err(format!("`{key}` has shape {:?}, the parameter {:?}", saved.size(), t.size()));
                }
                t.copy_(&saved.to_kind(Kind::Float));
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0, 12), 0.5);
        assert_eq!(c.lr_at(1, 12), 1.0);
        assert!((c.lr_at(2, 12) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(7, 12) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(12, 12) - 0.1).abs() < 1e-12);
        let k = OptimConfig { lr: 2.0, ..Default::default() };
        assert_eq!(k.lr_at(100, 10), 2.0);
    }

    #[test]
    fn decay_groups() {
        assert!(decays("model.language_model.layers.0.mlp.up_proj.weight", &[4, 4]));
        assert!(!decays("model.language_model.layers.0.input_layernorm.weight", &[4]));
        assert!(!decays("model.visual.blocks.0.attn.qkv.bias", &[12]));
        assert!(!decays("model.visual.merger.norm.weight", &[4]));
    }
}
