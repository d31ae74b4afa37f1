//! Rollouts and scoring, what the trainer calls: batched sampling with a KV cache (G
//! samples per prompt from one prompt encoding) and a scoring pass that recomputes the
//! responses' log-probs and entropies through the same forward.

use qoq_data::rng::{stream, unit};
use tch::{Device, Kind, Tensor};

use crate::policy::{Inputs, Policy, SpecialTokens};
use crate::PolicyError;

/// How tokens are drawn. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f64,
    /// Keep the k most likely tokens (ties with the k-th kept); `None` keeps all.
    pub top_k: Option<i64>,
    /// Keep the smallest set whose probability reaches p; `None` keeps all.
    pub top_p: Option<f64>,
    pub max_new_tokens: usize,
    /// Generation of a sequence ends after it emits one of these (kept in its tokens).
    pub stop_tokens: Vec<i64>,
    /// Never sampled (the image and video placeholders).
    pub banned_tokens: Vec<i64>,
    /// Responses per prompt (the group size G of GRPO / DRPO).
    pub samples_per_prompt: usize,
    pub seed: u64,
}

impl SamplingConfig {
    /// Qwen's defaults (temperature 0.7, top-k 20, top-p 0.8), stopping and banning as the
    /// family's `tokens` say (see [`Policy::special_tokens`]).
    pub fn qwen_default(tokens: &SpecialTokens) -> Self {
        Self {
            temperature: 0.7,
            top_k: Some(20),
            top_p: Some(0.8),
            max_new_tokens: 512,
            stop_tokens: tokens.stop.clone(),
            banned_tokens: tokens.banned.clone(),
            samples_per_prompt: 1,
            seed: 0,
        }
    }
}

/// Sampled responses, `prompt rows x samples_per_prompt` of them, grouped by prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollouts {
    /// Index of the prompt each response answers.
    pub prompt_index: Vec<usize>,
    /// Generated ids, up to and including the stop token when there is one.
    pub tokens: Vec<Vec<i64>>,
    /// Log-probability of each generated token under the distribution it was drawn from
    /// (after banned tokens, temperature, top-k and top-p). Without banned tokens, top-k and
    /// top-p these equal [`Policy::score`]'s at the same temperature.
    pub logprobs: Vec<Vec<f32>>,
    /// Whether each response ended with a stop token (else it hit `max_new_tokens`).
    pub stopped: Vec<bool>,
}

impl Rollouts {
    /// The responses as text (stop tokens left out, special tokens kept).
    pub fn texts(&self, tokenizer: &crate::chat::Tokenizer, stop_tokens: &[i64]) -> Result<Vec<String>, PolicyError> {
        self.tokens
            .iter()
            .map(|t| {
                let ids: Vec<u32> = t.iter().filter(|x| !stop_tokens.contains(x)).map(|&x| x as u32).collect();
                tokenizer.decode(&ids, false)
            })
            .collect()
    }
}

/// Temperature, top-k and top-p applied to `logits` [N, V] (transformers' warper order);
/// removed entries are -inf. Banned tokens are removed first.
pub fn warp_logits(logits: &Tensor, config: &SamplingConfig) -> Tensor {
    let mut x = logits.to_kind(Kind::Float);
    if !config.banned_tokens.is_empty() {
        let vocab = x.size()[1];
        let banned: Vec<i64> = config.banned_tokens.iter().copied().filter(|&t| t >= 0 && t < vocab).collect();
        if !banned.is_empty() {
            let idx = Tensor::from_slice(&banned).to_device(x.device());
            x = x.index_fill(1, &idx, f64::NEG_INFINITY);
        }
    }
    if config.temperature > 0.0 {
        x = x.divide_scalar(config.temperature);
    }
    if let Some(k) = config.top_k.filter(|&k| k > 0 && k < x.size()[1]) {
        let (top, _) = x.topk(k, -1, true, true);
        let kth = top.narrow(1, k - 1, 1);
        x = x.masked_fill(&x.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if let Some(p) = config.top_p.filter(|&p| p < 1.0) {
        // Ascending sort; drop the low tail whose cumulative mass is <= 1 - p, keep >= 1.
        let (sorted, order) = x.sort(-1, false);
        let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove = cumulative.le(1.0 - p);
        let last = remove.size()[1] - 1;
        let _ = remove.narrow(1, last, 1).fill_(0);
        let remove = remove.scatter(1, &order, &remove.shallow_clone());
        x = x.masked_fill(&remove, f64::NEG_INFINITY);
    }
    x
}

/// One draw per row of `probs` [N, V] from uniforms in [0, 1): the first index whose
/// cumulative probability reaches `u * total`. Zero-probability tokens are never chosen.
fn sample_inverse_cdf(probs: &Tensor, uniforms: &[f32]) -> Tensor {
    let cdf = probs.cumsum(-1, Kind::Float);
    let vocab = cdf.size()[1];
    let total = cdf.narrow(1, vocab - 1, 1);
    let u = Tensor::from_slice(uniforms).to_device(probs.device()).view([-1, 1]) * total;
    cdf.lt_tensor(&u).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(vocab - 1)
}

/// Sample `samples_per_prompt` responses for every prompt row of `inputs`. The prompts
/// (and their images) are encoded once; the cache is then repeated per sample.
pub fn generate<P: Policy + ?Sized>(
    policy: &P,
    inputs: &Inputs<'_>,
    config: &SamplingConfig,
) -> Result<Rollouts, PolicyError> {
    let _guard = tch::no_grad_guard();
    let g = config.samples_per_prompt.max(1);
    let (hidden, state) = policy.forward_hidden(inputs)?;
    let b = hidden.size()[0] as usize;
    let rows: Vec<i64> = (0..b as i64).flat_map(|i| std::iter::repeat_n(i, g)).collect();
    let mut state = state.select_rows(&rows);
    let n = rows.len();
    let last = hidden.select(1, -1);
    let mut logits = policy.logits(&last).index_select(0, &Tensor::from_slice(&rows).to_device(last.device()));
    // One random stream per (prompt, sample): a response's draws depend on the seed and
    // its place in the group only, not on libtorch's global generator or the batch.
    let mut streams: Vec<_> = (0..n).map(|i| stream(config.seed, &[(i / g) as u64, (i % g) as u64])).collect();

    let mut tokens = vec![Vec::new(); n];
    let mut logprobs = vec![Vec::new(); n];
    let mut stopped = vec![false; n];
    for step in 0..config.max_new_tokens {
        let warped = warp_logits(&logits, config);
        let logp = warped.log_softmax(-1, Kind::Float);
        let chosen = if config.temperature > 0.0 {
            let uniforms: Vec<f32> = streams.iter_mut().map(|r| unit(r) as f32).collect();
            sample_inverse_cdf(&logp.exp(), &uniforms)
        } else {
            logp.argmax(-1, false)
        };
        let chosen_logp = logp.gather(1, &chosen.unsqueeze(1), false).squeeze_dim(1);
        let ids = Vec::<i64>::try_from(&chosen.to_device(Device::Cpu))?;
        let lps = Vec::<f32>::try_from(&chosen_logp.to_device(Device::Cpu))?;
        for i in 0..n {
            if stopped[i] {
                continue;
            }
            tokens[i].push(ids[i]);
            logprobs[i].push(lps[i]);
            stopped[i] = config.stop_tokens.contains(&ids[i]);
        }
        if stopped.iter().all(|&s| s) || step + 1 == config.max_new_tokens {
            break;
        }
        logits = policy.decode_step(&mut state, &chosen)?;
    }
    Ok(Rollouts { prompt_index: rows.iter().map(|&r| r as usize).collect(), tokens, logprobs, stopped })
}

#[cfg(test)]
mod tests {
    use super::*;

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
