//! bf16 compute with fp32 master weights (`model.dtype = "bfloat16"`).
//!
//! The policy's variables hold bf16: forward, backward, generation and scoring run in it.
//! Each trainable parameter has an fp32 master copy, which is what the optimizer sees:
//! its gradient (fp32) is where micro-batch gradients accumulate and what the ranks
//! reduce; AdamW updates it; the bf16 weights are then re-cast from it. Checkpoints write
//! the masters (the frozen weights stay bf16), so a resumed run re-casts exactly the bf16
//! weights it stopped with, and resume stays bit-identical.

use tch::{Kind, Tensor};

use qoq_policy::Policy;

use crate::config::GradDtype;

/// The bf16 trainable weights and their fp32 masters, in the same (name) order.
pub(crate) struct MasterWeights {
    names: Vec<String>,
    model: Vec<Tensor>,
    masters: Vec<Tensor>,
    grad_dtype: GradDtype,
}

impl MasterWeights {
    /// Takes fp32 master copies of `policy`'s trainable weights (fp32 now), then casts the
    /// whole policy to bf16.
    pub fn new(policy: &mut dyn Policy, grad_dtype: GradDtype) -> Self {
        let (names, masters): (Vec<String>, Vec<Tensor>) = tch::no_grad(|| {
            policy
                .trainable_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_kind(Kind::Float).copy().set_requires_grad(true)))
                .unzip()
        });
        policy.set_kind(Kind::BFloat16);
        let model: Vec<Tensor> = policy.trainable_parameters().into_iter().map(|(_, t)| t).collect();
        debug_assert_eq!(model.len(), masters.len());
        Self { names, model, masters, grad_dtype }
    }

    /// The masters by name: what the optimizer updates.
    pub fn named_masters(&self) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(self.masters.iter().map(Tensor::shallow_clone)).collect()
    }

    /// After a micro-batch's backward: with fp32 accumulation, adds the bf16 gradients
    /// into the masters' and clears them (so no bf16 sum spans micro-batches).
    pub fn after_backward(&self) {
        if self.grad_dtype == GradDtype::Float32 {
            self.move_gradients();
        }
    }

    /// Before the optimizer step: whatever gradient is still on the bf16 weights moves to
    /// the masters (all of it, with bf16 accumulation).
    pub fn before_step(&self) {
        self.move_gradients();
    }

    /// After the optimizer step: the bf16 weights re-cast from the updated masters.
    pub fn after_step(&self) {
        tch::no_grad(|| {
            for (p, m) in self.model.iter().zip(&self.masters) {
                p.shallow_clone().copy_(m);
            }
        });
    }

    /// Runs `f` with the masters in place of the trainable bf16 weights (a checkpoint
    /// holds them), then puts the bf16 weights back.
    pub fn with_masters_in_place<T>(&self, f: impl FnOnce() -> T) -> T {
        tch::no_grad(|| {
            for (p, m) in self.model.iter().zip(&self.masters) {
                p.shallow_clone().set_data(&m.detach());
            }
        });
        let out = f();
        tch::no_grad(|| {
            for (p, m) in self.model.iter().zip(&self.masters) {
                p.shallow_clone().set_data(&m.to_kind(Kind::BFloat16));
            }
        });
        out
    }

    fn move_gradients(&self) {
        tch::no_grad(|| {
            for (p, m) in self.model.iter().zip(&self.masters) {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut mg = m.grad();
                if mg.defined() {
                    let _ = mg.g_add_(&g.to_kind(Kind::Float));
                }
                let _ = g.zero_();
            }
        });
    }
}
