//! RMSNorm as the Qwen families compute it: statistics in f32, cast back before the weight.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `weight * (x.f32 * rsqrt(mean(x.f32^2) + eps)).to(dtype)`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: p.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (xf * (variance + self.eps).rsqrt()).to_kind(x.kind())
    }
}
