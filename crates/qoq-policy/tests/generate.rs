//! Generation and scoring on the tiny parity checkpoints: greedy decoding reproduces
//! transformers' tokens, sampling is seeded, G samples share one prompt encoding, and the
//! scoring pass gives back the sampling log-probs (PPO ratio 1 at the first update).

mod common;

use common::{case, fixtures, grids, inputs};
use qoq_policy::warp_logits;
use qoq_policy::{Inputs, Policy, Qwen3VL, SamplingConfig};
use tch::{Device, Kind, Tensor};

fn model() -> Qwen3VL {
    Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap()
}

fn config(temperature: f64, g: usize, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k: None,
        top_p: None,
        max_new_tokens: 6,
        stop_tokens: vec![],
        banned_tokens: vec![1000, 1001],
        samples_per_prompt: g,
        seed,
    }
}

#[test]
fn greedy_generation_reproduces_transformers_on_a_padded_batch() {
    let m = model();
    for name in ["one_image", "video", "batch_left_padded"] {
        let t = case(name);
        let out = m.generate(&inputs(&t), &config(0.0, 1, 0)).unwrap();
        let expected = Vec::<Vec<i64>>::try_from(&t["gen_tokens"]).unwrap();
        assert_eq!(out.tokens, expected, "{name}");
        assert!(out.stopped.iter().all(|s| !s));
    }
}

#[test]
fn stop_tokens_end_a_response_and_are_kept() {
    let m = model();
    let t = case("one_image");
    let expected = Vec::<Vec<i64>>::try_from(&t["gen_tokens"]).unwrap();
    let mut c = config(0.0, 1, 0);
    c.stop_tokens = vec![expected[0][2]];
    let out = m.generate(&inputs(&t), &c).unwrap();
    let first_stop = expected[0].iter().position(|&x| x == expected[0][2]).unwrap();
    assert_eq!(out.tokens[0], expected[0][..=first_stop]);
    assert!(out.stopped[0]);
}

#[test]
fn sampling_is_seeded_and_groups_share_the_prompt() {
    let m = model();
    let t = case("two_images");
    let a = m.generate(&inputs(&t), &config(1.0, 4, 7)).unwrap();
    let b = m.generate(&inputs(&t), &config(1.0, 4, 7)).unwrap();
    let c = m.generate(&inputs(&t), &config(1.0, 4, 8)).unwrap();
    assert_eq!(a, b, "same seed, same rollouts");
    assert_ne!(a.tokens, c.tokens, "another seed, other rollouts");
    assert_eq!(a.prompt_index, [0, 0, 0, 0]);
    let distinct: std::collections::HashSet<&Vec<i64>> = a.tokens.iter().collect();
    assert!(distinct.len() > 1, "4 samples at temperature 1 should not all agree");
    assert!(a.tokens.iter().flatten().all(|&x| x != 1000 && x != 1001));
}

#[test]
fn scoring_gives_back_the_sampling_logprobs() {
    let m = model();
    let t = case("batch_left_padded");
    // No banned tokens: the sampling distribution is then the model's at temperature 1.
    let mut c = config(1.0, 2, 3);
    c.banned_tokens.clear();
    let rollouts = m.generate(&inputs(&t), &c).unwrap();
    // The prompt rows repeated per sample, as the trainer scores them.
    let rows = Tensor::from_slice(&rollouts.prompt_index.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let ids = t["input_ids"].index_select(0, &rows);
    let mask = t["attention_mask"].index_select(0, &rows);
    // Images follow their rows: rows 0 and 2 hold one image each, in order.
    let grid = grids(t.get("image_grid_thw"));
    let per_row: Vec<i64> = grid.iter().map(|g| g[0] * g[1] * g[2]).collect();
    let pixels = &t["pixel_values"];
    let (img0, img1) = (pixels.narrow(0, 0, per_row[0]), pixels.narrow(0, per_row[0], per_row[1]));
    let repeated = Tensor::cat(&[&img0, &img0, &img1, &img1], 0);
    let scored_inputs = Inputs {
        input_ids: Some(&ids),
        attention_mask: Some(&mask),
        pixel_values: Some(&repeated),
        image_grids: vec![grid[0], grid[0], grid[1], grid[1]],
        ..Default::default()
    };
    let (logp, entropy) = m.score(&scored_inputs, &rollouts.tokens, 1.0, qoq_policy::DEFAULT_CHUNK_TOKENS).unwrap();
    let sampled = Tensor::from_slice(&rollouts.logprobs.concat()).view([6, 6]);
    let ratio_error = (logp.to_kind(Kind::Float) - sampled).exp().rsub_scalar(1.0).abs().max().double_value(&[]);
    assert!(ratio_error < 1e-4, "sampling and scoring log-probs differ: ratio off by {ratio_error}");
    // Scoring twice (old and new log-probs before any update) gives ratio exactly 1.
    let (again, _) = m.score(&scored_inputs, &rollouts.tokens, 1.0, qoq_policy::DEFAULT_CHUNK_TOKENS).unwrap();
    assert!(again.equal(&logp));
    assert!(entropy.min().double_value(&[]) > 0.0);
    assert!(logp.requires_grad(), "scoring keeps the graph for the policy gradient");
}

#[test]
fn warping_follows_transformers_order() {
    let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.0, 2.0]).view([1, 5]);
    let keep = |c: &SamplingConfig| {
        let w = warp_logits(&logits, c);
        Vec::<f32>::try_from(w.view([5])).unwrap().iter().map(|x| x.is_finite()).collect::<Vec<_>>()
    };
    let mut c = config(1.0, 1, 0);
    c.banned_tokens = vec![1];
    assert_eq!(keep(&c), [true, false, true, true, true]);
    c.banned_tokens.clear();
    c.top_k = Some(2);
    assert_eq!(keep(&c), [false, true, true, false, true], "ties with the k-th are kept");
    c.top_k = None;
    c.top_p = Some(0.5);
    // softmax: 3 -> 0.50, 2 -> 0.18 x2, 1 -> 0.07, 0 -> 0.02: the top token alone reaches 0.5.
    assert_eq!(keep(&c), [false, true, false, false, false]);
}

#[test]
fn a_prefill_with_autograd_still_leaves_a_usable_cache() {
    let m = model();
    let t = case("one_image");
    let tokens = Vec::<Vec<i64>>::try_from(&t["gen_tokens"]).unwrap();
    let next = Tensor::from_slice(&[tokens[0][0]]);
    let (_, mut with_grad) = m.prefill(&inputs(&t)).unwrap();
    let step_grad = m.decode_step(&mut with_grad, &next).unwrap();
    let _guard = tch::no_grad_guard();
    let (_, mut plain) = m.prefill(&inputs(&t)).unwrap();
    let step_plain = m.decode_step(&mut plain, &next).unwrap();
    assert!(step_grad.requires_grad());
    let diff = (step_grad.detach() - step_plain).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "decode after an autograd prefill differs by {diff}");
}
