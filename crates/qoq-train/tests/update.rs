//! The memory-saving update (chunked log-probs, activation recomputation) gives the
//! gradients of the plain one: full `[B, T, vocab]` logits and one autograd graph through
//! the whole model, as the trainer computed them before. Both families, images (Qwen3-VL's
//! DeepStack features, Qwen2.5-VL's window attention) and a left-padded batch; the PPO
//! loss (clipping active, KL on) and the SFT loss.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{case, fixtures, inputs};

use qoq_policy::{forward_for_update, load_policy, Inputs, Policy, UpdateOptions};
use qoq_train::loss::{policy_loss, sft_loss, LossConfig};
use tch::{Device, Kind, Tensor};

/// Responses of unequal lengths (the last row the longest), tokens drawn from the vocabulary.
fn responses(rows: usize, vocab: i64) -> Vec<Vec<i64>> {
    (0..rows).map(|i| (0..(9 + 5 * i as i64)).map(|j| (17 * j + 31 * i as i64 + 5) % vocab).collect()).collect()
}

/// Which loss the gradients are taken of.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// PPO-clip with dual clip and the k3 KL; old log-probs shifted so some ratios clip.
    Rl,
    Sft,
}

const TEMPERATURE: f64 = 0.7;

fn loss_of(loss: Loss, logp: &Tensor, mask: &Tensor, anchor: &Tensor) -> Tensor {
    let n = mask.sum(Kind::Float).double_value(&[]);
    match loss {
        Loss::Rl => {
            let rows = logp.size()[0];
            let shift = Tensor::arange(logp.size()[1], (anchor.kind(), Device::Cpu)).sin() * 0.4;
            let old = anchor + shift.unsqueeze(0);
            let reference = anchor - 0.1;
            let adv = Tensor::linspace(-1.0, 1.5, rows, (anchor.kind(), Device::Cpu));
            let config = LossConfig { kl_coef: 0.05, ..Default::default() };
            policy_loss(logp, &old, Some(&reference), &adv, mask, &config, n).loss
        }
        Loss::Sft => sft_loss(logp, mask, n),
    }
}

fn mask_of(responses: &[Vec<i64>]) -> Tensor {
    let t = responses.iter().map(Vec::len).max().unwrap();
    let rows: Vec<f32> =
        responses.iter().flat_map(|r| (0..t).map(move |j| if j < r.len() { 1.0 } else { 0.0 })).collect();
    Tensor::from_slice(&rows).view([responses.len() as i64, t as i64])
}

/// The gradients (by parameter name) left by `run`, which are then zeroed.
fn gradients(policy: &dyn Policy, run: impl FnOnce()) -> BTreeMap<String, Tensor> {
    for (_, t) in policy.var_store().variables() {
        let mut g = t.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    run();
    policy
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.grad().defined())
        .map(|(n, t)| (n, t.grad().copy()))
        .collect()
}

/// Today's reference: the whole forward with autograd, `[B, T, vocab]` logits.
fn plain_logp(policy: &dyn Policy, inputs: &Inputs<'_>, responses: &[Vec<i64>]) -> Tensor {
    let ids = inputs.input_ids.unwrap();
    let (b, l) = ids.size2().unwrap();
    let t = responses.iter().map(Vec::len).max().unwrap() as i64;
    let flat: Vec<i64> = responses.iter().flat_map(|r| (0..t as usize).map(move |j| *r.get(j).unwrap_or(&0))).collect();
    let resp = Tensor::from_slice(&flat).view([b, t]);
    let mask = mask_of(responses);
    let prompt_mask = inputs
        .attention_mask
        .map(|m| m.shallow_clone())
        .unwrap_or_else(|| Tensor::ones([b, l], (Kind::Int64, Device::Cpu)));
    let full_ids = Tensor::cat(&[ids, &resp], 1);
    let full_mask = Tensor::cat(&[prompt_mask, mask.to_kind(Kind::Int64)], 1);
    let (hidden, _) = policy.forward_hidden(&inputs.with_ids(&full_ids, &full_mask)).unwrap();
    let logits = policy.logits(&hidden.narrow(1, l - 1, t)).to_kind(Kind::Float) / TEMPERATURE;
    let logp_all = logits.log_softmax(-1, Kind::Float);
    logp_all.gather(2, &resp.unsqueeze(-1), false).squeeze_dim(-1) * mask
}

fn check(family: &str, checkpoint: &str, case_name: &str) {
    for kind in [Kind::Double, Kind::Float] {
        check_in(family, checkpoint, case_name, kind);
    }
}

/// The policy and a case's tensors in `kind`.
fn policy_and_case(
    family: &str,
    checkpoint: &str,
    case_name: &str,
    kind: Kind,
) -> (Box<dyn Policy>, HashMap<String, Tensor>) {
    let mut policy = load_policy(&fixtures(family).join(checkpoint), Device::Cpu).unwrap();
    policy.set_kind(kind);
    let mut tensors = case(family, case_name);
    for key in ["pixel_values", "pixel_values_videos"] {
        if let Some(t) = tensors.get_mut(key) {
            *t = t.to_kind(kind);
        }
    }
    (policy, tensors)
}

/// Each parameter's distance from `truth` relative to its norm, and the whole vector's.
fn errors(grads: &BTreeMap<String, Tensor>, truth: &BTreeMap<String, Tensor>) -> (f64, BTreeMap<String, f64>) {
    let (mut diff2, mut norm2, mut each) = (0.0, 0.0, BTreeMap::new());
    for (name, t) in truth {
        let t = t.to_kind(Kind::Double);
        let (d, n) = ((grads[name].to_kind(Kind::Double) - &t).norm().double_value(&[]), t.norm().double_value(&[]));
        (diff2, norm2) = (diff2 + d * d, norm2 + n * n);
        each.insert(name.clone(), d / n.max(1e-30));
    }
    ((diff2 / norm2).sqrt(), each)
}

/// In fp64 the two computations agree to fp64 rounding (an error in the chain rule would
/// show at any precision). In fp32 both are compared with the fp64 gradient: the saving
/// update must be within 1e-6 of the plain one relative to each parameter's norm, or, where
/// this CPU's kernels leave the plain fp32 gradient itself further from the fp64 one (the
/// head's chunks and the reductions sum in other orders: up to 2.4e-6 on one CPU, 5e-7 on
/// another), no further from fp64 than twice the plain one's distance plus 1e-6.
fn check_in(family: &str, checkpoint: &str, case_name: &str, kind: Kind) {
    let (policy, tensors) = policy_and_case(family, checkpoint, case_name, kind);
    let inputs = inputs(&tensors);
    let rows = inputs.input_ids.unwrap().size()[0] as usize;
    let vocab = policy.text_model().embed_tokens.ws.size()[0];
    let responses = responses(rows, vocab);
    let mask = mask_of(&responses);
    let anchor = tch::no_grad(|| plain_logp(policy.as_ref(), &inputs, &responses));
    let mut failures = Vec::new();
    // The fp64 gradients of the same losses (the same anchor), for the fp32 check.
    let (policy64, tensors64) = policy_and_case(family, checkpoint, case_name, Kind::Double);
    let inputs64 = common::inputs(&tensors64);
    let anchor64 = anchor.to_kind(Kind::Double);
    for loss in [Loss::Rl, Loss::Sft] {
        let plain = gradients(policy.as_ref(), || {
            loss_of(loss, &plain_logp(policy.as_ref(), &inputs, &responses), &mask, &anchor).backward();
        });
        let truth = (kind == Kind::Float).then(|| {
            gradients(policy64.as_ref(), || {
                let logp = plain_logp(policy64.as_ref(), &inputs64, &responses);
                loss_of(loss, &logp, &mask.to_kind(Kind::Double), &anchor64).backward();
            })
        });
        let plain_error = truth.as_ref().map(|t| errors(&plain, t));
        assert!(plain.len() > 10, "{family}/{case_name}: only {} parameters got a gradient", plain.len());
        for options in [
            UpdateOptions { chunk_tokens: 3, recompute: false },
            UpdateOptions { chunk_tokens: 5, recompute: true },
            UpdateOptions { chunk_tokens: 1 << 20, recompute: true },
        ] {
            let mut logp_seen = None;
            let saving = gradients(policy.as_ref(), || {
                let forward = forward_for_update(policy.as_ref(), &inputs, &responses, TEMPERATURE, &options).unwrap();
                let logp = forward.logp.detach().set_requires_grad(true);
                loss_of(loss, &logp, &mask, &anchor).backward();
                forward.backward(policy.as_ref(), &inputs, &logp.grad()).unwrap();
                logp_seen = Some(logp.detach());
            });
            let what = format!("{family}/{case_name}, {kind:?}, {loss:?}, {options:?}");
            let logp_diff = (logp_seen.unwrap() - &anchor).abs().max().double_value(&[]);
            assert!(logp_diff < 1e-5, "{what}: log-probs differ by {logp_diff}");
            assert_eq!(
                saving.keys().collect::<Vec<_>>(),
                plain.keys().collect::<Vec<_>>(),
                "{what}: other parameters got gradients"
            );
            // The whole gradient vector, relative to its norm; and the worst parameter.
            let (mut diff2, mut norm2, mut worst) = (0.0, 0.0, (0.0, String::new()));
            for (name, g) in &plain {
                let (d, n) = ((&saving[name] - g).norm().double_value(&[]), g.norm().double_value(&[]));
                (diff2, norm2) = (diff2 + d * d, norm2 + n * n);
                let relative = d / n.max(1e-30);
                // NaN counts as the worst.
                if relative.is_nan() || relative > worst.0 {
                    worst = (relative, name.clone());
                }
            }
            let whole = (diff2 / norm2).sqrt();
            let (bound_whole, bound_each) = if kind == Kind::Double { (1e-13, 1e-12) } else { (1e-6, 1e-6) };
            eprintln!(
                "{what}: gradient differs by {whole:.2e} of its norm; worst parameter {} by {:.2e}",
                worst.1, worst.0
            );
            let close = !(whole.is_nan() || worst.0.is_nan() || whole > bound_whole || worst.0 > bound_each);
            // fp32 on a CPU whose plain gradient is itself that far from fp64: as accurate.
            let as_accurate = match (&truth, &plain_error) {
                (Some(truth), Some((plain_whole, plain_each))) => {
                    let (saving_whole, saving_each) = errors(&saving, truth);
                    let bad: Vec<String> = saving_each
                        .iter()
                        // NaN counts as bad.
                        .filter(|(n, e)| e.is_nan() || **e > 2.0 * plain_each[*n] + 1e-6)
                        .map(|(n, e)| format!("{n}: {e:.2e} vs plain {:.2e}", plain_each[n]))
                        .collect();
                    eprintln!("{what}: from fp64, whole {saving_whole:.2e} (plain {plain_whole:.2e})");
                    saving_whole <= 2.0 * plain_whole + 1e-6 && bad.is_empty()
                }
                _ => false,
            };
            if !close && !as_accurate {
                failures.push(format!("{what}: whole {whole:.2e}, {} {:.2e}", worst.1, worst.0));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn qwen3_vl_two_images_deepstack() {
    check("policy", "tiny-untied", "two_images");
}

#[test]
fn qwen3_vl_left_padded_batch_tied_head() {
    check("policy", "tiny-tied", "batch_left_padded");
}

#[test]
fn qwen2_5_vl_window_attention_image() {
    check("qwen2_5_vl", "tiny-untied", "image_window_multiple");
}

#[test]
fn qwen2_5_vl_video() {
    check("qwen2_5_vl", "tiny-tied", "video");
}
