//! Rollouts and scoring, what the trainer calls: batched sampling with a KV cache (G
//! samples per prompt from one prompt encoding) and a scoring pass that recomputes the
//! responses' log-probs and entropies through the same forward.

use qoq_data::rng::{stream, unit};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use crate::policy::{Inputs, Policy, SpecialTokens};
use crate::sampler::draw;
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

/// The random stream of sample `sample` of the prompt keyed `prompt`: a response's draws
/// depend on the seed, its prompt's key and its place in the group only, not on libtorch's
/// global generator, the batch, the slot or the rank that samples it.
pub fn response_stream(seed: u64, prompt: u64, sample: usize) -> ChaCha8Rng {
    stream(seed, &[prompt, sample as u64])
}

/// The reference sampler the engine is tested against ([`crate::RolloutEngine`] is what
/// the trainer uses): every row stays in the batch until all stop, its cache grows.
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
    // Prompt row i is keyed i: the engine given the same keys draws the same responses.
    let mut streams: Vec<_> = (0..n).map(|i| response_stream(config.seed, (i / g) as u64, i % g)).collect();

    let mut tokens = vec![Vec::new(); n];
    let mut logprobs = vec![Vec::new(); n];
    let mut stopped = vec![false; n];
    for step in 0..config.max_new_tokens {
        let uniforms: Vec<f32> =
            if config.temperature > 0.0 { streams.iter_mut().map(|r| unit(r) as f32).collect() } else { Vec::new() };
        let (chosen, chosen_logp) = draw(&logits, &uniforms, config);
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
