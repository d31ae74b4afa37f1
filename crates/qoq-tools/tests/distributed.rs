//! Data-parallel training over real c10d (TCPStore + Gloo) processes: 2 and 3 ranks, in
//! every sharding mode (none, optimizer, gradients, full), against one process on the same
//! global batch; a rank killed mid-run; resuming with another world size and sharding.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{setup, weights};

/// Global batch of 6 prompts (one optimizer step per RL step) x G = 2: it splits over 1, 2
/// or 3 ranks. The single process samples with 5 rollout slots and 4 prompts per prefill,
/// the ranks with 2 slots and 1 (`gen`): the draws are keyed by the prompt's place in the
/// global batch, so the responses must still be the same. micro_batch 2 keeps every
/// rank's micro-batches the ones a single process makes, one thread each the same arithmetic.
/// What remains is the order in which gradients are summed (over micro-batches, then
/// ranks): rounding that Adam's first steps amplify for gradients near its eps, by about
/// 0.03 x lr here on one CPU and 0.13 x lr on another (an AMD EPYC, 3 ranks, 2026-12-02);
/// lr 5e-5 keeps that under the 1e-5 bound while each step moves weights by about lr.
/// How the single process and the ranks size their rollout engines (see [`config_text`]).
fn generation(nproc: &str) -> &'static str {
    if nproc == "1" {
        "generation_batch = 4\nrollout_slots = 5"
    } else {
        "generation_batch = 1"
    }
}

fn config_text(out: &Path, model: &Path, shards: &Path, gen: &str, extra: &str) -> String {
    format!(
        r#"
[run]
output_dir = "{out}"
seed = 5
threads = 1
save_every = 2
keep_checkpoints = 0
image_summary_every = 0

{inputs}

[sft]
steps = 2
batch_size = 6
micro_batch = 2
[sft.optim]
lr = 5e-5
weight_decay = 0.01

[rl]
steps = 3
prompts_per_step = 6
samples_per_prompt = 2
prompts_per_update = 6
micro_batch = 2
{gen}
max_new_tokens = 6
top_p = 1.0
[rl.optim]
lr = 5e-5
weight_decay = 0.01

[algorithm]
kl_coef = 0.01

[validation]
every = 2
max_samples = 5
batch_size = 1
temperature = 0.0
max_new_tokens = 6

[distributed]
timeout_s = 30
bucket_mb = 1
{extra}
"#,
        out = out.display(),
        inputs = common::inputs_toml(model, shards),
    )
}

fn train(config: &Path, extra_args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train")).arg(config).args(extra_args).output().unwrap()
}

/// (prompt_id, response, reward, advantage) of every rollout line of a step.
fn rollouts(out: &Path, step: u64) -> Vec<(String, String, f64, f64)> {
    let text = std::fs::read_to_string(out.join(format!("rollouts/step_{step}.jsonl"))).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["prompt_id"].as_str().unwrap().into(),
                v["response"].as_str().unwrap().into(),
                v["reward"].as_f64().unwrap(),
                v["advantage"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn scalars(out: &Path) -> BTreeMap<(i64, String), f64> {
    let tb: Vec<PathBuf> = std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(tb.len(), 1, "one event file (rank 0's) in {}", out.display());
    let mut all = BTreeMap::new();
    for e in qoq_train::tensorboard::read_events(&tb[0]).unwrap() {
        for (tag, v) in e.scalars {
            all.insert((e.step, tag), v as f64);
        }
    }
    all
}

fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_and_three_ranks_train_as_one_process_on_the_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let run = |name: &str, nproc: usize, sharding: &str| -> PathBuf {
        let out = tmp.path().join(name);
        let extra = format!("sharding = \"{sharding}\"");
        let cfg = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, config_text(&out, &model, &shards, generation(&nproc.to_string()), &extra)).unwrap();
        let result = train(&cfg, &["--nproc", &nproc.to_string()]);
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        out
    };
    let one = run("one", 1, "none");
    let final_step = "checkpoints/step_5";
    let one_state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join(final_step).join("trainer_state.json")).unwrap())
            .unwrap();
    let one_scalars = scalars(&one);
    for (name, nproc, sharding) in [
        ("two", 2, "none"),
        ("three", 3, "none"),
        ("two_optimizer", 2, "optimizer"),
        ("three_optimizer", 3, "optimizer"),
        ("two_gradients", 2, "gradients"),
        ("three_gradients", 3, "gradients"),
        ("two_full", 2, "full"),
        ("three_full", 3, "full"),
    ] {
        let out = run(name, nproc, sharding);
        // Rewards and advantages of every response of every RL step: the same.
        for step in 3..=5 {
            let (a, b) = (rollouts(&one, step), rollouts(&out, step));
            assert_eq!(a.len(), 12);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((&x.0, &x.1), (&y.0, &y.1), "{name} step {step}: another prompt or response");
                assert!((x.2 - y.2).abs() < 1e-12 && (x.3 - y.3).abs() < 1e-9, "{name} step {step}: {x:?} vs {y:?}");
            }
        }
        // Global figures: losses, validation, DRPO statistics.
        let s = scalars(&out);
        for key in [
            "actor/pg_loss",
            "actor/entropy",
            "actor/grad_norm",
            "sft/loss",
            "val/reward/overall",
            "val/accuracy",
            "critic/advantages/max",
            "response_length/mean",
        ] {
            let steps: Vec<&(i64, String)> = one_scalars.keys().filter(|(_, t)| t == key).collect();
            assert!(!steps.is_empty(), "no {key}");
            // The gradient norm is a square root of one fp32 sum over every parameter, which
            // the ranks add in another order (per shard, then reduced): 1.5e-5 relative was
            // seen on 3 ranks on one CPU (2026-12-02), where every other figure and the
            // weights (checked below to 1e-5) agreed within 1e-5.
            let tolerance = if key == "actor/grad_norm" { 5e-5 } else { 1e-5 };
            for k in steps {
                let (a, b) = (one_scalars[k], s[k]);
                assert!((a - b).abs() <= tolerance * a.abs().max(1.0), "{name}: {key} at step {}: {a} vs {b}", k.0);
            }
        }
        // The DRPO history (the global batch's) and the data cursor.
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(final_step).join("trainer_state.json")).unwrap())
                .unwrap();
        assert_eq!(state["drpo"], one_state["drpo"], "{name}");
        assert_eq!(state["cursor"], one_state["cursor"], "{name}");
        // Weights after 2 SFT + 3 RL optimizer steps.
        let diff = max_weight_difference(&one.join(final_step).join("model"), &out.join(final_step).join("model"));
        eprintln!("{name}: largest weight difference from one process {diff:.2e}");
        assert!(diff < 1e-5, "{name}: weights differ by {diff}");
        if sharding == "full" {
            // Written by every rank, exported to one Hugging Face folder as any checkpoint.
            let exported = out.join("exported");
            let result = Command::new(env!("CARGO_BIN_EXE_export"))
                .args(["--checkpoint", out.join(final_step).to_str().unwrap(), "--out", exported.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
            let diff = max_weight_difference(&one.join(final_step).join("model"), &exported);
            assert!(diff < 1e-5, "{name}: exported weights differ by {diff}");
        }
        // Moments: full, by name, the same as one process's.
        // (One file, or with sharded parameters one per writing rank and an index.)
        let opt = |dir: &Path| -> BTreeMap<String, tch::Tensor> {
            std::fs::read_dir(dir.join(final_step))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .flat_map(|f| tch::Tensor::read_safetensors(f).unwrap())
                .collect()
        };
        let (ma, mb) = (opt(&one), opt(&out));
        assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>(), "{name}");
        for (k, v) in &ma {
            let d = (v - &mb[k]).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: {k} differs by {d}");
        }
    }

    // Resume across world sizes and sharding modes: 3 ranks "full" for 2 steps, 2 ranks
    // "gradients" for 2 more, one process to the end: the weights of the uninterrupted run.
    let out = tmp.path().join("mixed");
    let cfg = tmp.path().join("mixed.toml");
    for (sharding, nproc, more) in [("full", "3", Some("2")), ("gradients", "2", Some("2")), ("optimizer", "1", None)] {
        let text = config_text(&out, &model, &shards, generation(nproc), &format!("sharding = \"{sharding}\""));
        std::fs::write(&cfg, text).unwrap();
        let mut args = vec!["--nproc", nproc];
        if out.join("checkpoints").is_dir() {
            args.push("--resume");
        }
        if let Some(n) = more {
            args.extend(["--max-steps", n]);
        }
        let result = train(&cfg, &args);
        assert!(result.status.success(), "mixed, {sharding}: {}", String::from_utf8_lossy(&result.stderr));
    }
    let diff = max_weight_difference(&one.join(final_step).join("model"), &out.join(final_step).join("model"));
    eprintln!("full x 3 -> gradients x 2 -> one process: largest weight difference {diff:.2e}");
    assert!(diff < 1e-5, "resumed across modes: weights differ by {diff}");
}

/// bf16 compute with fp32 masters: full sharding on 2 ranks against one process and
/// against 2 ranks without sharding. All compute the same bf16 micro-batches and sum them
/// in fp32 (`model.grad_dtype`), in other orders; a master that lands on the other side of
/// a bf16 rounding boundary changes the next step's forward by one bf16 ulp, so 2 ranks
/// differ from one process by more than in fp32 whatever the sharding.
#[test]
fn bf16_with_full_sharding_trains_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let run = |name: &str, nproc: &str, sharding: &str| -> PathBuf {
        let out = tmp.path().join(name);
        let cfg = tmp.path().join(format!("{name}.toml"));
        let text = config_text(&out, &model, &shards, generation(nproc), &format!("sharding = \"{sharding}\""))
            .replace("[model]\n", "[model]\ndtype = \"bfloat16\"\n");
        std::fs::write(&cfg, text).unwrap();
        let result = train(&cfg, &["--nproc", nproc]);
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        out
    };
    let (one, plain, two) = (run("one", "1", "none"), run("plain", "2", "none"), run("two", "2", "full"));
    let step = "checkpoints/step_5/model";
    let base = max_weight_difference(&one.join(step), &plain.join(step));
    let diff = max_weight_difference(&one.join(step), &two.join(step));
    eprintln!("bf16 on 2 ranks, largest weight difference from one process: no sharding {base:.2e}, full {diff:.2e}");
    // Sharding adds nothing beyond what data parallelism in bf16 already has (measured:
    // 8.1e-4 both; the bf16 ulp at 1 is 3.9e-3).
    assert!(diff <= 1.5 * base + 1e-5 && diff < 4e-3, "full {diff} vs no sharding {base}");
    // The checkpoint holds the fp32 masters, written by both ranks.
    let w = weights(&two.join(step));
    assert!(w.iter().all(|(_, t)| t.kind() == tch::Kind::Float), "a bf16 tensor in the checkpoint");
    let files = std::fs::read_dir(two.join(step))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-"));
    assert_eq!(files.count(), 2, "one weight file per rank");
}

/// The pids of a process's children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn rank_of(pid: u32) -> Option<usize> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"RANK="))
        .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok())
}

#[test]
fn a_killed_rank_stops_the_others_and_the_run_resumes_on_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let out = tmp.path().join("run");
    let cfg = tmp.path().join("run.toml");
    let text = config_text(&out, &model, &shards, generation("2"), "sharded_optimizer = true")
        .replace("save_every = 2", "save_every = 1")
        .replace("steps = 3\n", "steps = 6\n");
    std::fs::write(&cfg, text).unwrap();
    let log = tmp.path().join("launcher.log");
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(&cfg)
        .args(["--nproc", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("checkpoints/step_3").exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint within 5 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The launcher re-executes itself once (allocator settings) under the same pid.
    let ranks = children(launcher.id());
    let victim = ranks.iter().copied().find(|&p| rank_of(p) == Some(1)).expect("rank 1's process");
    let killed_at = Instant::now();
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(90),
            "the job did not end within the timeout after rank 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("rank 1 failed first"), "{said}");
    assert!(said.contains("rank 0 of 2") && said.contains("no word from rank 1"), "rank 0 should name rank 1: {said}");
    // Resume on 3 ranks from the last complete checkpoint, then on 1.
    let last_before: u64 = qoq_train::checkpoint::latest(&out.join("checkpoints"))
        .unwrap()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()[5..]
        .parse()
        .unwrap();
    let resumed = train(&cfg, &["--resume", "--nproc", "3", "--max-steps", "1"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains(&format!("steps {last_before}/8 done")));
    let resumed = train(&cfg, &["--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(out.join("checkpoints/step_8/model").is_dir());
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let cfg = tmp.path().join("odd.toml");
    std::fs::write(&cfg, config_text(&tmp.path().join("odd"), &model, &shards, generation("2"), "")).unwrap();
    let result = train(&cfg, &["--nproc", "4"]);
    assert!(!result.status.success());
    let said = String::from_utf8_lossy(&result.stderr);
    assert!(said.contains("sft.batch_size (6) must be a multiple of the number of ranks (4)"), "{said}");
}
