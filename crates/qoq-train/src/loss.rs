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

/// The loss keys of the `[algorithm]` table (the rest are [`crate::advantage::AdvantageConfig`]'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub clip_low: f64,
    pub clip_high: f64,
    /// Dual-clip constant c (> 1); None disables it (`dual_clip = 0` in TOML).
    #[serde(with = "zero_is_off")]
    pub dual_clip: Option<f64>,
    /// beta; 0 skips the reference model altogether.
    pub kl_coef: f64,
    #[serde(rename = "loss_agg")]
    pub aggregation: Aggregation,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { clip_low: 0.2, clip_high: 0.3, dual_clip: Some(3.0), kl_coef: 1e-4, aggregation: Aggregation::TokenMean }
    }
}

impl LossConfig {
    /// Its keys in the `[algorithm]` table.
    pub const KEYS: [&'static str; 5] = ["clip_low", "clip_high", "dual_clip", "kl_coef", "loss_agg"];

    /// Checks value ranges; the error names the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip_low > 0.0 && self.clip_low < 1.0) {
            return Err(format!("algorithm.clip_low must be in (0, 1), got {}", self.clip_low));
        }
        if !(self.clip_high > 0.0 && self.clip_high.is_finite()) {
            return Err(format!("algorithm.clip_high must be positive and finite, got {}", self.clip_high));
        }
        if let Some(c) = self.dual_clip {
            if !(c > 1.0 && c.is_finite()) {
                return Err(format!("algorithm.dual_clip must be above 1 (or 0 to disable), got {c}"));
            }
        }
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            return Err(format!("algorithm.kl_coef must be non-negative and finite, got {}", self.kl_coef));
        }
        Ok(())
    }
}

/// `dual_clip = 0` in TOML is `None`.
mod zero_is_off {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(v.unwrap_or(0.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let c = f64::deserialize(d)?;
        Ok((c != 0.0).then_some(c))
    }
}

/// The k3 clamp: each token's KL estimate is clamped to [-K3_CLAMP, K3_CLAMP].
pub const K3_CLAMP: f64 = 10.0;

/// Per-token k3 estimate of KL(pi || pi_ref) from `delta` = logp_ref - logp:
/// exp(delta) - delta - 1, clamped to [-K3_CLAMP, K3_CLAMP]. The one definition: the loss's
/// KL term and [`k3_sum`] (DRPO's KL damping) both use it.
pub fn k3(delta: &Tensor) -> Tensor {
    (delta.exp() - delta - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
}

/// Sum over a response's tokens of [`k3`] (the per-response KL of DRPO's damping), from
/// float32 log-probs; the sum is in float64.
pub fn k3_sum(logp: &[f32], ref_logp: &[f32]) -> f64 {
    let n = logp.len().min(ref_logp.len());
    let delta = (Tensor::from_slice(&ref_logp[..n]) - Tensor::from_slice(&logp[..n])).to_kind(Kind::Double);
    k3(&delta).sum(Kind::Double).double_value(&[])
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
            let kl = k3(&(r - logp));
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
    fn k3_is_the_clamped_estimate_and_k3_sum_adds_it_over_tokens() {
        let logp = [-1.0f32, -0.5, -3.0, -0.1];
        let reference = [-1.0f32, -0.7, -0.2, -20.0];
        let by_hand: f64 = logp
            .iter()
            .zip(&reference)
            .map(|(&l, &r)| {
                let d = (r - l) as f64;
                (d.exp() - d - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
            })
            .sum();
        // The last token is clamped (exp(2.8) - 2.8 - 1 = 12.6 > 10); the first is 0.
        assert!((k3_sum(&logp, &reference) - by_hand).abs() < 1e-12);
        let per_token = k3(&(Tensor::from_slice(&reference) - Tensor::from_slice(&logp)).to_kind(Kind::Double));
        assert_eq!(Vec::<f64>::try_from(&per_token).unwrap()[0], 0.0);
        assert_eq!(Vec::<f64>::try_from(&per_token).unwrap()[2], K3_CLAMP);
        // The loss's KL term is the same estimate: with A = 0 the loss is beta x mean k3.
        let lp = Tensor::from_slice(&logp).to_kind(Kind::Double).view([1, 4]);
        let rp = Tensor::from_slice(&reference).to_kind(Kind::Double).view([1, 4]);
        let c = LossConfig { kl_coef: 0.5, ..Default::default() };
        let t = policy_loss(&lp, &lp, Some(&rp), &Tensor::from_slice(&[0.0f64]), &lp.ones_like(), &c, 4.0);
        assert!((t.kl_loss - by_hand / 4.0).abs() < 1e-12);
    }

    #[test]
    fn config_reads_its_toml_keys_and_validates() {
        let c: LossConfig = toml::from_str("dual_clip = 0\nloss_agg = \"seq-mean-token-mean\"").unwrap();
        assert_eq!(c, LossConfig { dual_clip: None, aggregation: Aggregation::SeqMeanTokenMean, ..Default::default() });
        let c: LossConfig = toml::from_str("dual_clip = 2").unwrap();
        assert_eq!(c.dual_clip, Some(2.0));
        assert!(toml::from_str::<LossConfig>("aggregation = \"token-mean\"").is_err(), "the TOML key is loss_agg");
        // KEYS are exactly the serialised keys.
        let keys: Vec<String> = toml::Table::try_from(LossConfig::default()).unwrap().keys().cloned().collect();
        let mut expected: Vec<String> = LossConfig::KEYS.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(keys, expected);
        for (bad, key) in [
            (LossConfig { clip_low: 1.0, ..Default::default() }, "clip_low"),
            (LossConfig { dual_clip: Some(0.5), ..Default::default() }, "dual_clip"),
            (LossConfig { kl_coef: f64::NAN, ..Default::default() }, "kl_coef"),
            (LossConfig { clip_high: -0.1, ..Default::default() }, "clip_high"),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains(&format!("algorithm.{key}")), "{err}");
        }
        LossConfig::default().validate().unwrap();
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
                .map(|&(s, l)| {
                    policy_loss(
                        &logp.narrow(0, s, l),
                        &old.narrow(0, s, l),
                        None,
                        &adv.narrow(0, s, l),
                        &mask.narrow(0, s, l),
                        &c,
                        n,
                    )
                    .pg_loss
                })
                .sum();
            assert!((whole - parts).abs() < 1e-12, "{agg:?}");
        }
    }
}
