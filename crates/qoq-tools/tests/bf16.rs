//! bf16 compute with fp32 master weights: checkpoints hold the masters, resume is
//! bit-identical, frozen weights stay bf16, and the run tracks the fp32 one.

mod common;

use std::path::Path;

use common::{config_text, setup, weights, write_config};
use qoq_train::config::TrainConfig;
use qoq_train::parallel::DataParallel;
use qoq_train::{Metrics, Trainer};
use tch::Kind;

fn bf16_config(dir: &Path, name: &str, model: &Path, shards: &Path, model_keys: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let text = config_text(&out, model, shards, "").replace("[model]\n", &format!("[model]\n{model_keys}\n"));
    write_config(dir, &format!("{name}.toml"), &text)
}

fn run(config: &Path, resume: bool, limit: Option<u64>) -> Vec<(u64, Metrics)> {
    let mut trainer = Trainer::new(TrainConfig::from_file(config).unwrap(), resume, DataParallel::single()).unwrap();
    let mut seen = Vec::new();
    trainer.run_until(limit, |step, m| seen.push((step, m.clone()))).unwrap();
    seen
}

#[test]
fn bf16_checkpoints_hold_fp32_masters_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    // The merger frozen: its weights stay bf16 in the checkpoint, the rest are masters.
    let keys = "dtype = \"bfloat16\"\nfreeze = [\"merger\"]";
    let whole = bf16_config(tmp.path(), "whole", &model, &shards, keys);
    let seen = run(&whole, false, None);
    assert_eq!(seen.len(), 4);
    for (step, m) in &seen {
        let loss = m.get("sft/loss").or(m.get("actor/pg_loss")).copied().unwrap_or(f64::NAN);
        assert!(loss.is_finite(), "step {step}: loss {loss}");
    }

    let split = bf16_config(tmp.path(), "split", &model, &shards, keys);
    run(&split, false, Some(2));
    run(&split, true, None);
    let a = weights(&tmp.path().join("whole/checkpoints/step_4/model"));
    let b = weights(&tmp.path().join("split/checkpoints/step_4/model"));
    assert_eq!(a.len(), b.len());
    let initial = weights(&model);
    for (((name, ta), (nb, tb)), (n0, t0)) in a.iter().zip(&b).zip(&initial) {
        assert_eq!((name, name), (nb, n0));
        assert!(ta.equal(tb), "{name} differs between the uninterrupted and the resumed bf16 run");
        if name.contains("merger") {
            assert_eq!(ta.kind(), Kind::BFloat16, "{name}: a frozen weight is saved as the bf16 it computed with");
            assert!(ta.to_kind(Kind::Float).equal(&t0.to_kind(Kind::BFloat16).to_kind(Kind::Float)));
        } else {
            assert_eq!(ta.kind(), Kind::Float, "{name}: a trained weight is saved as its fp32 master");
        }
    }
    // Training moved the masters by less than a bf16 step in places: fp32 precision is kept.
    let moved =
        a.iter().zip(&initial).filter(|((n, _), _)| n.contains("layers.0.mlp.up_proj")).any(|((_, t), (_, t0))| {
            let delta = (t - t0).abs();
            let tiny = delta.gt(0.0).logical_and(&delta.lt_tensor(&(t0.abs() / 256.0)));
            tiny.any().int64_value(&[]) == 1
        });
    assert!(moved, "no update smaller than bf16's resolution survived: the masters are not fp32");
}

#[test]
fn bf16_tracks_fp32_on_the_first_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let fp32 = run(&bf16_config(tmp.path(), "fp32", &model, &shards, ""), false, Some(2));
    let bf16 = run(&bf16_config(tmp.path(), "bf16", &model, &shards, "dtype = \"bfloat16\""), false, Some(2));
    for ((step, a), (_, b)) in fp32.iter().zip(&bf16) {
        let (la, lb) = (a["sft/loss"], b["sft/loss"]);
        assert!((la - lb).abs() <= 0.02 * la.abs(), "step {step}: SFT loss fp32 {la} vs bf16 {lb}");
    }
}
