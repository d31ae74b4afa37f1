//! The rollout engine against the reference `generate`: the same responses whatever the
//! slot count and prefill grouping, draws keyed by the prompt and not the batch, greedy
//! parity with transformers kept; and the vocabulary-sort-free sampler against the sorted
//! specification.

mod common;

use std::collections::HashMap;

use common::{case, fixtures, grids};
use qoq_data::rng::{stream, unit};
use qoq_policy::{
    draw, warp_logits, EngineConfig, Grid, Inputs, Policy, PolicyError, PromptSource, Qwen3VL, RolloutEngine, Rollouts,
    SamplingConfig,
};
use tch::{Device, Kind, Tensor};

fn model() -> Qwen3VL {
    Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap()
}

/// One prompt of a fixture case: its ids and its own media.
struct Prompt {
    ids: Vec<i64>,
    pixels: Option<Tensor>,
    grids: Vec<Grid>,
    video_pixels: Option<Tensor>,
    video_grids: Vec<Grid>,
}

/// Prompts given as separate rows; prompt `i` is keyed `keys[i]`.
struct Prompts {
    prompts: Vec<Prompt>,
    keys: Vec<u64>,
}

/// The rows of `t` as prompts, each with the images / videos its placeholders take.
fn split(t: &HashMap<String, Tensor>, image: i64, video: i64) -> Vec<Prompt> {
    let ids = Vec::<Vec<i64>>::try_from(&t["input_ids"]).unwrap();
    let mask = match t.get("attention_mask") {
        Some(m) => Vec::<Vec<i64>>::try_from(m).unwrap(),
        None => ids.iter().map(|r| vec![1; r.len()]).collect(),
    };
    fn media(
        token: i64,
        pixels: Option<&Tensor>,
        grid: Vec<Grid>,
    ) -> impl FnMut(&[i64]) -> (Option<Tensor>, Vec<Grid>) + '_ {
        let mut next = (0usize, 0i64);
        move |row: &[i64]| {
            let mut want = row.iter().filter(|&&x| x == token).count() as i64;
            let (start_grid, start_row) = next;
            while want > 0 {
                let g = grid[next.0];
                want -= g[0] * g[1] * g[2] / 4;
                next = (next.0 + 1, next.1 + g[0] * g[1] * g[2]);
            }
            let mine = grid[start_grid..next.0].to_vec();
            let px = (!mine.is_empty()).then(|| pixels.unwrap().narrow(0, start_row, next.1 - start_row));
            (px, mine)
        }
    }
    let mut images = media(image, t.get("pixel_values"), grids(t.get("image_grid_thw")));
    let mut videos = media(video, t.get("pixel_values_videos"), grids(t.get("video_grid_thw")));
    ids.iter()
        .zip(&mask)
        .map(|(row, m)| {
            let row: Vec<i64> = row.iter().zip(m).filter(|(_, &v)| v != 0).map(|(&x, _)| x).collect();
            let (pixels, grids) = images(&row);
            let (video_pixels, video_grids) = videos(&row);
            Prompt { ids: row, pixels, grids, video_pixels, video_grids }
        })
        .collect()
}

impl PromptSource for Prompts {
    fn len(&self) -> usize {
        self.prompts.len()
    }
    fn prompt_tokens(&self, i: usize) -> usize {
        self.prompts[i].ids.len()
    }
    fn key(&self, i: usize) -> u64 {
        self.keys[i]
    }
    fn with_batch(
        &self,
        indices: &[usize],
        f: &mut dyn FnMut(&Inputs<'_>) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError> {
        let picked: Vec<&Prompt> = indices.iter().map(|&i| &self.prompts[i]).collect();
        let width = picked.iter().map(|p| p.ids.len()).max().unwrap();
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for p in &picked {
            let pad = width - p.ids.len();
            ids.extend(std::iter::repeat_n(0, pad).chain(p.ids.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, p.ids.len())));
        }
        let shape = [picked.len() as i64, width as i64];
        let (ids, mask) = (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape));
        let cat = |ts: Vec<&Tensor>| (!ts.is_empty()).then(|| Tensor::cat(&ts, 0));
        let pixels = cat(picked.iter().filter_map(|p| p.pixels.as_ref()).collect());
        let videos = cat(picked.iter().filter_map(|p| p.video_pixels.as_ref()).collect());
        f(&Inputs {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            pixel_values: pixels.as_ref(),
            image_grids: picked.iter().flat_map(|p| p.grids.clone()).collect(),
            pixel_values_videos: videos.as_ref(),
            video_grids: picked.iter().flat_map(|p| p.video_grids.clone()).collect(),
            ..Default::default()
        })
    }
}

/// Every prompt of the fixture cases (images, two images, video, text only, padded rows).
fn all_prompts(m: &Qwen3VL) -> Prompts {
    let s = m.special_tokens();
    let prompts: Vec<Prompt> = ["one_image", "two_images", "video", "batch_left_padded", "text_only"]
        .into_iter()
        .flat_map(|name| split(&case(name), s.image, s.video))
        .collect();
    let keys = (0..prompts.len() as u64).collect();
    Prompts { prompts, keys }
}

fn sampling(g: usize, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: Some(0.9),
        max_new_tokens: 7,
        stop_tokens: vec![],
        banned_tokens: vec![1000, 1001],
        samples_per_prompt: g,
        seed,
    }
}

/// `generate` on all prompts in one batch (row i keyed i).
fn reference(m: &Qwen3VL, source: &Prompts, c: &SamplingConfig) -> Rollouts {
    let all: Vec<usize> = (0..source.len()).collect();
    let mut out = None;
    source
        .with_batch(&all, &mut |inputs| {
            out = Some(m.generate(inputs, c)?);
            Ok(())
        })
        .unwrap();
    out.unwrap()
}

fn assert_same(a: &Rollouts, b: &Rollouts, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens");
    assert_eq!(a.stopped, b.stopped, "{what}: stopped");
    assert_eq!(a.prompt_index, b.prompt_index, "{what}: prompt order");
    for (x, y) in a.logprobs.iter().flatten().zip(b.logprobs.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "{what}: log-prob {x} vs {y}");
    }
}

#[test]
fn the_engine_samples_what_generate_samples_whatever_the_slots() {
    let m = model();
    let source = all_prompts(&m);
    let g = 3;
    let mut c = sampling(g, 11);
    // Mixed lengths: stop on tokens the reference emits early in some responses.
    let free = reference(&m, &source, &c);
    c.stop_tokens = free.tokens.iter().step_by(4).map(|t| t[2]).collect();
    let expected = reference(&m, &source, &c);
    let lengths: Vec<usize> = expected.tokens.iter().map(Vec::len).collect();
    assert!(lengths.iter().any(|&l| l < 7) && lengths.contains(&7), "mixed lengths: {lengths:?}");
    for (slots, prefill_prompts) in [(g, 1), (2 * g + 1, 2), (4 * g, 3), (source.len() * g, source.len())] {
        let engine = RolloutEngine::new(&m, EngineConfig { slots, prefill_prompts });
        let (got, stats) = engine.run(&source, &c).unwrap();
        assert_same(&got, &expected, &format!("{slots} slots, {prefill_prompts} per prefill"));
        assert!(stats.occupancy > 0.0 && stats.occupancy <= 1.0);
        assert!(stats.prefills >= source.len().div_ceil(prefill_prompts));
    }
}

#[test]
fn draws_follow_the_prompt_key_not_the_batch() {
    let m = model();
    let mut source = all_prompts(&m);
    let c = sampling(2, 5);
    let engine = RolloutEngine::new(&m, EngineConfig { slots: 4, prefill_prompts: 2 });
    let (whole, _) = engine.run(&source, &c).unwrap();
    // The same prompts as two shares (two ranks), each keyed by its global place.
    let n = source.len();
    let second = source.prompts.split_off(n / 2);
    let first = Prompts { prompts: source.prompts, keys: (0..(n / 2) as u64).collect() };
    let second = Prompts { prompts: second, keys: ((n / 2) as u64..n as u64).collect() };
    let (a, _) = RolloutEngine::new(&m, EngineConfig { slots: 2, prefill_prompts: 1 }).run(&first, &c).unwrap();
    let (b, _) = RolloutEngine::new(&m, EngineConfig { slots: 6, prefill_prompts: 3 }).run(&second, &c).unwrap();
    assert_eq!([a.tokens, b.tokens].concat(), whole.tokens);
    // Another key: other draws.
    let moved = Prompts { prompts: second.prompts, keys: second.keys.iter().map(|k| k + 100).collect() };
    let (other, _) = engine.run(&moved, &c).unwrap();
    assert_ne!(other.tokens, whole.tokens[(n / 2) * 2..]);
}

#[test]
fn greedy_engine_output_reproduces_transformers() {
    let m = model();
    let s = m.special_tokens();
    for name in ["one_image", "video", "batch_left_padded"] {
        let t = case(name);
        let source = Prompts { prompts: split(&t, s.image, s.video), keys: vec![0, 1, 2] };
        let mut c = sampling(1, 0);
        c.temperature = 0.0;
        c.top_p = None;
        c.max_new_tokens = 6;
        let (got, _) = RolloutEngine::new(&m, EngineConfig { slots: 2, prefill_prompts: 1 }).run(&source, &c).unwrap();
        assert_eq!(got.tokens, Vec::<Vec<i64>>::try_from(&t["gen_tokens"]).unwrap(), "{name}");
    }
}

#[test]
fn too_few_slots_are_a_clear_error() {
    let m = model();
    let source = all_prompts(&m);
    let err = RolloutEngine::new(&m, EngineConfig { slots: 2, prefill_prompts: 1 }).run(&source, &sampling(3, 0));
    assert!(err.unwrap_err().to_string().contains("2 rollout slots cannot hold one prompt's 3 samples"));
}

/// The sorted specification's draw: warp, softmax, inverse CDF over the vocabulary.
fn sorted_draw(logits: &Tensor, u: &[f32], c: &SamplingConfig) -> (Vec<i64>, Vec<f32>) {
    let logp = warp_logits(logits, c).log_softmax(-1, Kind::Float);
    let cdf = logp.exp().cumsum(-1, Kind::Double);
    let v = cdf.size()[1];
    let total = cdf.narrow(1, v - 1, 1);
    let target = Tensor::from_slice(u).to_kind(Kind::Double).view([-1, 1]) * total;
    let chosen = cdf.lt_tensor(&target).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(v - 1);
    let lp = logp.gather(1, &chosen.unsqueeze(1), false).squeeze_dim(1);
    (Vec::try_from(&chosen).unwrap(), Vec::try_from(&lp).unwrap())
}

#[test]
fn the_sort_free_sampler_draws_what_the_sorted_one_draws() {
    tch::manual_seed(3);
    let mut rng = stream(9, &[]);
    let mut c = sampling(1, 0);
    c.banned_tokens = vec![7, 8];
    // Peaked (trained-like), moderate and flat rows; a small and the real vocabulary.
    for (vocab, scale) in [(1024i64, 8.0), (1024, 1.0), (151_936, 6.0), (151_936, 0.05)] {
        let logits = Tensor::randn([16, vocab], (Kind::Float, Device::Cpu)) * scale;
        for (top_k, top_p, temperature) in
            [(None, Some(0.99), 1.0), (None, Some(0.5), 0.7), (Some(20), Some(0.8), 0.7), (Some(50), None, 1.0)]
        {
            c.top_k = top_k;
            c.top_p = top_p;
            c.temperature = temperature;
            let u: Vec<f32> = (0..16).map(|_| unit(&mut rng) as f32).collect();
            let (want, want_lp) = sorted_draw(&logits, &u, &c);
            let (got, got_lp) = draw(&logits, &u, &c);
            let what = format!("vocab {vocab}, scale {scale}, top-k {top_k:?}, top-p {top_p:?}");
            assert_eq!(Vec::<i64>::try_from(&got).unwrap(), want, "{what}");
            for (a, b) in Vec::<f32>::try_from(&got_lp).unwrap().iter().zip(&want_lp) {
                assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{what}: log-prob {a} vs {b}");
            }
        }
    }
}
