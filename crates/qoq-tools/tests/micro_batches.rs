//! Token-budget micro-batches: packing changes nothing but float rounding (the loss
//! normaliser is the optimizer batch's), the padding fraction is logged, and scoring uses
//! the update's packing (the first ratio stays 1).

mod common;

use std::path::Path;

use common::{config_text, setup, weights, write_config};
use qoq_train::config::TrainConfig;
use qoq_train::parallel::DataParallel;
use qoq_train::{Metrics, Trainer};

fn run(dir: &Path, name: &str, model: &Path, shards: &Path, sft: &str, rl: &str, steps: (u64, u64)) -> Vec<Metrics> {
    let out = dir.join(name);
    let text = config_text(&out, model, shards, "")
        .replace("[sft]\nsteps = 2\nbatch_size = 2\nmicro_batch = 2\n", &format!("[sft]\nsteps = {}\n{sft}\n", steps.0))
        .replace("[rl]\nsteps = 2\n", &format!("[rl]\nsteps = {}\n{rl}\n", steps.1));
    let config = write_config(dir, &format!("{name}.toml"), &text);
    let mut trainer = Trainer::new(TrainConfig::from_file(&config).unwrap(), false, DataParallel::single()).unwrap();
    let mut seen = Vec::new();
    trainer.run(|_, m| seen.push(m.clone())).unwrap();
    seen
}

#[test]
fn packing_under_a_token_budget_gives_the_same_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let dir = tmp.path();
    // SFT on 4 prompts per step: one row per forward, all in one forward, or packed under
    // a budget that forces several forwards of unequal sizes.
    let one = run(dir, "one", &model, &shards, "batch_size = 4\nmicro_batch = 1", "", (2, 0));
    assert_eq!(one.len(), 2);
    let all =
        run(dir, "all", &model, &shards, "batch_size = 4\nmicro_batch = 4\nmicro_batch_tokens = 100000", "", (2, 0));
    let packed =
        run(dir, "packed", &model, &shards, "batch_size = 4\nmicro_batch = 4\nmicro_batch_tokens = 150", "", (2, 0));
    assert_eq!(one[0]["perf/padding_fraction"], 0.0, "one row per forward pads nothing");
    assert!(all[0]["perf/padding_fraction"] > 0.0, "unequal lengths in one forward pad");
    for (name, m) in [("all", &all), ("packed", &packed)] {
        assert!(
            (m[1]["sft/loss"] - one[1]["sft/loss"]).abs() < 1e-5,
            "{name}: {} vs {}",
            m[1]["sft/loss"],
            one[1]["sft/loss"]
        );
    }
    // The updates agree to rounding: AdamW divides by sqrt(v), so an element whose
    // gradient is ~0 moves by rounding noise; compare whole updates, not elements.
    let initial = weights(&model);
    let reference = weights(&dir.join("one/checkpoints/step_2/model"));
    for name in ["all", "packed"] {
        let (mut diff, mut step) = (0.0, 0.0);
        for (((n, a), (_, b)), (_, w0)) in
            reference.iter().zip(weights(&dir.join(format!("{name}/checkpoints/step_2/model")))).zip(&initial)
        {
            diff += (a - &b).square().sum(tch::Kind::Double).double_value(&[]);
            step += (a - w0).square().sum(tch::Kind::Double).double_value(&[]);
            assert!((a - &b).abs().max().double_value(&[]) < 1e-3, "{name}: {n} moved differently");
        }
        let relative = (diff / step).sqrt();
        eprintln!("{name}: update differs by {relative:.2e} of its norm");
        assert!(relative < 1e-4, "{name}: the update differs by {relative:.2e} of its norm from one row per forward");
    }

    // RL with a budget: scoring and the update share the packing, so before any update
    // the ratio is 1 (nothing clipped, no old-new KL).
    let rl = run(dir, "rl", &model, &shards, "batch_size = 2\nmicro_batch = 2", "micro_batch_tokens = 120", (0, 1));
    let m = &rl[0];
    assert!(m["actor/ppo_kl"].abs() < 1e-6 && m["actor/pg_clipfrac"] == 0.0, "ratio not 1: {m:?}");
    assert!((0.0..1.0).contains(&m["perf/padding_fraction"]));
}
