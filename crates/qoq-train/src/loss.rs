//! The PPO-clip policy loss with asymmetric and dual clipping and the k3 KL term
//! (docs/drpo.md section 2).
//!
//! Per token, with rho = exp(logp - logp_old) and A the response's advantage:
//!   L_pg = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)), and for A < 0 at most -c A;
//!   kl   = exp(logp_ref - logp) - (logp_ref - logp) - 1, clamped to [-10, 10];
//!   L    = L_pg + beta kl, aggregated over the update batch.
//! Micro-batches return SUMS already divided by the whole optimizer batch's normaliser
//! (its token count, or its sequence count for seq-mean), so accumulating their gradients
//! gives exactly the gradient of the batch loss.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How token losses become the batch loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregation {
    /// Mean over every response token of the optimizer batch (the released code).
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Mean over responses of each response's token mean (the paper).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    pub clip_low: f64,
    pub clip_high: f64,
    /// Dual-clip constant c (> 1); None disables it.
    pub dual_clip: Option<f64>,
    /// beta; 0 skips the reference model altogether.
    pub kl_coef: f64,
    pub aggregation: Aggregation,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { clip_low: 0.2, clip_high: 0.3, dual_clip: Some(3.0), kl_coef: 1e-4, aggregation: Aggregation::TokenMean }
    }
}

/// One micro-batch's share of the batch loss and of the logged figures.
#[derive(Debug)]
pub struct LossTerms {
    /// Scalar to backpropagate: (L_pg + beta kl) summed and divided by the batch normaliser.
    pub loss: Tensor,
    /// The following are this micro-batch's shares (sum over micro-batches = batch value).
    pub pg_loss: f64,
    pub kl_loss: f64,
    pub pg_clipfrac_higher: f64,
    pub pg_clipfrac_lower: f64,
    /// Mean of logp_old - logp (an estimate of KL(old || new)).
    pub ppo_kl: f64,
}

/// The normaliser of a batch: its response tokens (token-mean) or responses (seq-mean).
pub fn batch_normaliser(aggregation: Aggregation, response_lengths: &[usize]) -> f64 {
    match aggregation {
        Aggregation::TokenMean => response_lengths.iter().sum::<usize>().max(1) as f64,
        Aggregation::SeqMeanTokenMean => response_lengths.len().max(1) as f64,
    }
}

/// `logp`, `old_logp`, `ref_logp` and `mask` are `[B, T]` (mask 1 on response tokens),
/// `advantages` `[B]`. `normaliser` comes from [`batch_normaliser`] over the whole
/// optimizer batch.
pub fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
    config: &LossConfig,
    normaliser: f64,
) -> LossTerms {
    let mask = mask.to_kind(logp.kind());
    let adv = advantages.to_kind(logp.kind()).unsqueeze(1).expand_as(logp);
    let log_ratio = logp - old_logp;
    let ratio = log_ratio.exp();
    let clipped = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    let loss1 = -&adv * &ratio;
    let loss2 = -&adv * &clipped;
    let higher = loss1.max_other(&loss2);
    let clipped_higher = loss1.lt_tensor(&loss2).to_kind(logp.kind());
    let negative = adv.lt(0.0);
    let (pg, clipped_lower) = match config.dual_clip {
        Some(c) => {
            let cap = -&adv * c;
            let lower = higher.min_other(&cap);
            let frac = higher.gt_tensor(&cap).logical_and(&negative).to_kind(logp.kind());
            (lower.where_self(&negative, &higher), frac)
        }
        None => (higher.shallow_clone(), higher.zeros_like()),
    };
    // Per-row weights that turn a masked sum into the chosen aggregation's share.
    let weights = match config.aggregation {
        Aggregation::TokenMean => mask.shallow_clone() / normaliser,
        Aggregation::SeqMeanTokenMean => {
            let len = mask.sum_dim_intlist(1, true, logp.kind()).clamp_min(1.0);
            &mask / len / normaliser
        }
    };
    let share = |t: &Tensor| (t * &weights).sum(Kind::Double);
    let pg_loss = share(&pg);
    let (loss, kl_loss) = match ref_logp {
        Some(r) if config.kl_coef != 0.0 => {
            let delta = r - logp;
            let kl = (delta.exp() - &delta - 1.0).clamp(-10.0, 10.0);
            let kl_loss = share(&kl);
            (&pg_loss + &kl_loss * config.kl_coef, kl_loss.double_value(&[]))
        }
        _ => (pg_loss.shallow_clone(), 0.0),
    };
    let no_grad = |t: &Tensor| tch::no_grad(|| share(t).double_value(&[]));
    LossTerms {
        loss: loss.to_kind(logp.kind()),
        pg_loss: pg_loss.double_value(&[]),
        kl_loss,
        pg_clipfrac_higher: no_grad(&clipped_higher),
        pg_clipfrac_lower: no_grad(&clipped_lower),
        ppo_kl: no_grad(&(-&log_ratio)),
    }
}

/// The SFT loss share: mean negative log-likelihood of the reference answer tokens.
pub fn sft_loss(logp: &Tensor, mask: &Tensor, normaliser: f64) -> Tensor {
    -(logp * mask.to_kind(logp.kind())).sum(Kind::Float) / normaliser
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_one_gives_minus_mean_advantage_and_no_clipping() {
        let logp = Tensor::from_slice(&[-1.0f64, -2.0, -0.5, -3.0]).view([2, 2]);
        let adv = Tensor::from_slice(&[1.0f64, -2.0]);
        let mask = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 0.0]).view([2, 2]);
        let t = policy_loss(&logp, &logp, None, &adv, &mask, &LossConfig::default(), 3.0);
        // Tokens: A = 1, 1, -2 -> -(1 + 1 - 2) / 3 = 0.
        assert!(t.pg_loss.abs() < 1e-12);
        assert_eq!((t.pg_clipfrac_higher, t.pg_clipfrac_lower, t.ppo_kl), (0.0, 0.0, 0.0));
        let seq = LossConfig { aggregation: Aggregation::SeqMeanTokenMean, ..Default::default() };
        let t = policy_loss(&logp, &logp, None, &adv, &mask, &seq, 2.0);
        // Rows: -1 and +2 -> mean 0.5.
        assert!((t.pg_loss - 0.5).abs() < 1e-12);
    }

    #[test]
    fn micro_batch_shares_sum_to_the_batch_value() {
        let logp = Tensor::from_slice(&[-1.0f64, -1.5, -0.2, -0.7, -2.0, -0.1]).view([3, 2]);
        let old = Tensor::from_slice(&[-1.2f64, -1.0, -0.9, -0.7, -1.0, -0.6]).view([3, 2]);
        let adv = Tensor::from_slice(&[0.7f64, -1.3, 0.4]);
        let mask = Tensor::from_slice(&[1.0f64, 1.0, 1.0, 0.0, 1.0, 1.0]).view([3, 2]);
        for agg in [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean] {
            let c = LossConfig { aggregation: agg, ..Default::default() };
            let n = batch_normaliser(agg, &[2, 1, 2]);
            let whole = policy_loss(&logp, &old, None, &adv, &mask, &c, n).pg_loss;
            let parts: f64 = [(0, 2), (2, 1)]
                .iter()
                .map(|&(s, l)| policy_loss(&logp.narrow(0, s, l), &old.narrow(0, s, l), None, &adv.narrow(0, s, l), &mask.narrow(0, s, l), &c, n).pg_loss)
                .sum();
            assert!((whole - parts).abs() < 1e-12, "{agg:?}");
        }
    }
}
