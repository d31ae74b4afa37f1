//! Drawing one token per row from vocabulary logits, on the logits' device.
//!
//! The distribution is transformers' warper order: banned tokens removed, temperature,
//! top-k (ties with the k-th kept), top-p (the smallest set of most likely tokens whose mass
//! reaches p). [`warp_logits`] writes that out over the whole vocabulary, top-p by a full
//! sort; it is the specification. [`draw`] produces the same draws and log-probs without
//! sorting the vocabulary:
//!
//! - the nucleus is found among the `k` likeliest tokens (a partial selection, O(V)), `k`
//!   starting at [`FIRST_CANDIDATES`] and widened 8x only while the `k` candidates hold
//!   less than p of the mass (then the nucleus may reach beyond them);
//! - a token at rank j (0 = likeliest) is kept when the tokens ranked above it hold less
//!   than p, which is the sorted rule (drop the low tail whose cumulative mass is <= 1 - p)
//!   read from the other end;
//! - the draw is the inverse CDF of the kept probabilities in vocabulary order, as in the
//!   specification, so one uniform per row picks the same token either way.
//!
//! Where the two can differ: float rounding of the mass sums (a token whose cumulative
//! mass lies within ~1e-7 of 1 - p), and ties at the nucleus edge (which of several equal
//! logits a sort or a selection puts first).

use tch::{Kind, Tensor};

use crate::generate::SamplingConfig;

/// Candidates the nucleus search starts with.
pub const FIRST_CANDIDATES: i64 = 64;

/// Temperature, top-k and top-p applied to `logits` [N, V] (transformers' warper order);
/// removed entries are -inf. Banned tokens are removed first. The specification of
/// [`draw`]'s distribution (it sorts the whole vocabulary for top-p).
pub fn warp_logits(logits: &Tensor, config: &SamplingConfig) -> Tensor {
    let mut x = scaled(logits, config);
    if let Some(k) = config.top_k.filter(|&k| k > 0 && k < x.size()[1]) {
        let (top, _) = x.topk(k, -1, true, true);
        let kth = top.narrow(1, k - 1, 1);
        x = x.masked_fill(&x.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if let Some(p) = config.top_p.filter(|&p| p < 1.0) {
        // Ascending sort; drop the low tail whose cumulative mass is <= 1 - p, keep >= 1.
        // The masses in f64: an f32 sum over 151,936 tokens is off by more than one
        // token's mass when the distribution is flat.
        let (sorted, order) = x.sort(-1, false);
        let cumulative = sorted.to_kind(Kind::Double).softmax(-1, Kind::Double).cumsum(-1, Kind::Double);
        let remove = cumulative.le(1.0 - p);
        let last = remove.size()[1] - 1;
        let _ = remove.narrow(1, last, 1).fill_(0);
        let remove = remove.scatter(1, &order, &remove.shallow_clone());
        x = x.masked_fill(&remove, f64::NEG_INFINITY);
    }
    x
}

/// Banned tokens removed and the temperature applied, in f32.
fn scaled(logits: &Tensor, config: &SamplingConfig) -> Tensor {
    let mut x = logits.to_kind(Kind::Float);
    let vocab = x.size()[1];
    let banned: Vec<i64> = config.banned_tokens.iter().copied().filter(|&t| t >= 0 && t < vocab).collect();
    if !banned.is_empty() {
        let idx = Tensor::from_slice(&banned).to_device(x.device());
        x = x.index_fill(1, &idx, f64::NEG_INFINITY);
    }
    if config.temperature > 0.0 {
        x = x.divide_scalar(config.temperature);
    }
    x
}

/// One draw per row of `probs` [N, V] from uniforms in [0, 1): the first index whose
/// cumulative probability reaches `u * total`. Zero-probability tokens are never chosen.
/// The sum runs in f64: over a flat distribution of 151,936 tokens f32 rounding alone
/// would move a draw to a neighbour about once in ten.
pub(crate) fn sample_inverse_cdf(probs: &Tensor, uniforms: &[f32]) -> Tensor {
    let cdf = probs.cumsum(-1, Kind::Double);
    let vocab = cdf.size()[1];
    let total = cdf.narrow(1, vocab - 1, 1);
    let u = Tensor::from_slice(uniforms).to_device(probs.device()).to_kind(Kind::Double).view([-1, 1]) * total;
    cdf.lt_tensor(&u).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(vocab - 1)
}

/// A token per row of `logits` [N, V] and its log-probability under the distribution it
/// was drawn from: `(tokens [N] i64, logp [N] f32)`. `uniforms` (one per row) are used
/// when `temperature > 0`; greedy takes the argmax.
pub fn draw(logits: &Tensor, uniforms: &[f32], config: &SamplingConfig) -> (Tensor, Tensor) {
    let vocab = logits.size()[1];
    let top_k = config.top_k.filter(|&k| k > 0 && k < vocab);
    let top_p = config.top_p.filter(|&p| p < 1.0);
    if config.temperature <= 0.0 || (top_k.is_none() && top_p.is_none()) {
        // No truncation beyond banning (or greedy): the whole vocabulary, no sort needed.
        let logp = warp_logits(logits, config).log_softmax(-1, Kind::Float);
        let chosen =
            if config.temperature > 0.0 { sample_inverse_cdf(&logp.exp(), uniforms) } else { logp.argmax(-1, false) };
        let chosen_logp = logp.gather(1, &chosen.unsqueeze(1), false).squeeze_dim(1);
        return (chosen, chosen_logp);
    }
    let x = scaled(logits, config);
    let (values, index) = candidates(&x, top_k, top_p);
    // Rank-ordered candidates -> vocabulary order, so the inverse CDF walks the kept
    // tokens as the specification's cumulative sum over the vocabulary does.
    let (index, order) = index.sort(-1, false);
    let values = values.gather(1, &order, false);
    let logp = values.log_softmax(-1, Kind::Float);
    let at = sample_inverse_cdf(&logp.exp(), uniforms).unsqueeze(1);
    (index.gather(1, &at, false).squeeze_dim(1), logp.gather(1, &at, false).squeeze_dim(1))
}

/// The kept tokens of each row as (scaled logits, ids) [N, k], rank order, removed ones at
/// -inf: the top-k set (ties with the k-th included), then the nucleus within it.
fn candidates(x: &Tensor, top_k: Option<i64>, top_p: Option<f64>) -> (Tensor, Tensor) {
    let vocab = x.size()[1];
    // The mass top-p measures against: over the top-k set when there is one, else all.
    let (mut k, log_total) = match top_k {
        Some(k) => (widen_for_ties(x, k), None),
        None => (FIRST_CANDIDATES.min(vocab), Some(log_sum_exp_f64(x))),
    };
    loop {
        let (values, index) = x.topk(k, -1, true, true);
        let Some(p) = top_p else { return (values, index) };
        let log_total = log_total.as_ref().map_or_else(|| log_sum_exp_f64(&values), Tensor::shallow_clone);
        // Masses in f64, as the specification sums them.
        let probs = (values.to_kind(Kind::Double) - log_total).exp();
        let above = probs.cumsum(-1, Kind::Double) - &probs;
        // Enough candidates when every row's k hold at least p (ranks beyond are dropped).
        let held = probs.sum_dim_intlist(-1, false, Kind::Double).min().double_value(&[]);
        if held >= p || k == vocab || top_k.is_some() {
            let mut drop = above.ge(p);
            let _ = drop.narrow(1, 0, 1).fill_(0);
            drop = drop.logical_or(&values.isneginf());
            return (values.masked_fill(&drop, f64::NEG_INFINITY), index);
        }
        k = (k * 8).min(vocab);
    }
}

/// Each row's log of the summed exponentials `[N, 1]`, accumulated in f64.
fn log_sum_exp_f64(x: &Tensor) -> Tensor {
    let max = x.amax([1], true);
    let max = max.masked_fill(&max.isneginf(), 0.0);
    (x - &max).exp().sum_dim_intlist(1, true, Kind::Double).log() + max.to_kind(Kind::Double)
}

/// `k`, or more where a row has ties with its k-th value (all of them are kept).
fn widen_for_ties(x: &Tensor, k: i64) -> i64 {
    let (top, _) = x.topk(k, -1, true, true);
    let kth = top.narrow(1, k - 1, 1);
    x.ge_tensor(&kth).sum_dim_intlist(-1, false, Kind::Int64).max().int64_value(&[]).max(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoq_data::rng::{stream, unit};

    #[test]
    fn inverse_cdf_draws_follow_the_distribution_and_skip_zero_mass() {
        let probs = Tensor::from_slice(&[0.1f32, 0.0, 0.6, 0.3]).view([1, 4]).expand([20_000, 4], false).contiguous();
        let mut rng = stream(1, &[]);
        let u: Vec<f32> = (0..20_000).map(|_| unit(&mut rng) as f32).collect();
        let draws = Vec::<i64>::try_from(sample_inverse_cdf(&probs, &u)).unwrap();
        let freq = |k: i64| draws.iter().filter(|&&d| d == k).count() as f64 / 20_000.0;
        assert_eq!(freq(1), 0.0);
        for (k, p) in [(0, 0.1), (2, 0.6), (3, 0.3)] {
            assert!((freq(k) - p).abs() < 0.015, "token {k}: {} vs {p}", freq(k));
        }
        let edge = Vec::<i64>::try_from(sample_inverse_cdf(&probs.narrow(0, 0, 2), &[0.0, 0.999_999])).unwrap();
        assert_eq!(edge, [0, 3]);
    }
}
