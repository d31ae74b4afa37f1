//! End-to-end runs of the trainer on a tiny random policy and a small synthetic set:
//! outputs in their documented places, exact resume after `kill -9`, export, bad configs.

mod common;

use common::{config_text, repo, setup, weights, write_config};
use qoq_policy::{Policy, Qwen3VL};
use tch::Tensor;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qoq_train::config::TrainConfig;
use qoq_train::Trainer;

#[test]
fn a_run_writes_its_outputs_resumes_exactly_after_kill_9_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());

    // A: uninterrupted, in process.
    let out_a = tmp.path().join("a");
    let cfg_a = write_config(tmp.path(), "a.toml", &config_text(&out_a, &model, &shards, ""));
    let mut trainer =
        Trainer::new(TrainConfig::from_file(&cfg_a).unwrap(), false, qoq_train::parallel::DataParallel::single())
            .unwrap();
    let mut seen = Vec::new();
    trainer.run(|step, m| seen.push((step, m.clone()))).unwrap();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let rl = &seen[2].1;
    for key in [
        "reward/overall",
        "reward/f1",
        "actor/pg_loss",
        "actor/kl_loss",
        "actor/entropy",
        "actor/grad_norm",
        "actor/lr",
        "response_length/mean",
        "timing_s/gen",
        "timing_s/reward",
        "timing_s/adv",
        "timing_s/update_actor",
        "timing_s/step",
    ] {
        assert!(rl.get(key).is_some_and(|v| v.is_finite()), "{key} missing or not finite");
    }
    // One optimizer step per rollout batch: the ratio is exactly 1 (old and new log-probs
    // come from the same forward), so nothing is clipped and the old-new KL is 0.
    assert!(
        rl["actor/ppo_kl"].abs() < 1e-6 && rl["actor/pg_clipfrac"] == 0.0,
        "old and new log-probs differ before any update: {}",
        rl["actor/ppo_kl"]
    );
    assert!(rl.keys().any(|k| k.starts_with("drpo/") && k.ends_with("/temperature")));
    drop(trainer);

    // Rollout files: one line per response, the documented fields.
    let lines = std::fs::read_to_string(out_a.join("rollouts/step_3.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        for key in [
            "step",
            "prompt_id",
            "domain",
            "response",
            "reward",
            "f1",
            "iou",
            "format",
            "length",
            "jaccard",
            "advantage",
        ] {
            assert!(r.get(key).is_some(), "rollout line lacks {key}: {r}");
        }
    }
    assert_eq!(rows[0]["prompt_id"], rows[1]["prompt_id"], "the G responses of a prompt share its id");
    // TensorBoard: our reader checks every record's CRCs; scalars and the image are there.
    let tb: Vec<PathBuf> = std::fs::read_dir(out_a.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).collect();
    let events = qoq_train::tensorboard::read_events(&tb[0]).unwrap();
    assert!(events.iter().any(|e| e.scalars.iter().any(|(t, _)| t == "timing_s/gen")));
    assert!(events.iter().any(|e| e.images.iter().any(|(t, _, _)| t == "rollout/boxes")));

    // B: the same run as a process, killed with SIGKILL once step 2 is checkpointed, resumed.
    let out_b = tmp.path().join("b");
    let cfg_b = write_config(tmp.path(), "b.toml", &config_text(&out_b, &model, &shards, ""));
    let bin = env!("CARGO_BIN_EXE_train");
    let mut child = Command::new(bin).arg(&cfg_b).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !out_b.join("checkpoints/step_2").exists() {
        assert!(start.elapsed() < Duration::from_secs(600), "no checkpoint within 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = Command::new(bin).arg(&cfg_b).arg("--resume").output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let a = weights(&out_a.join("checkpoints/step_4/model"));
    let b = weights(&out_b.join("checkpoints/step_4/model"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the uninterrupted and the resumed run");
    }
    // Starting again without --resume refuses to overwrite.
    let again = Command::new(bin).arg(&cfg_b).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // Export: a Hugging Face folder that loads and gives the trained policy's logits.
    let hf = tmp.path().join("hf");
    let export = Command::new(env!("CARGO_BIN_EXE_export"))
        .args([
            "--checkpoint",
            out_a.join("checkpoints/step_4").to_str().unwrap(),
            "--out",
            hf.to_str().unwrap(),
            "--max-shard-bytes",
            "2000000",
        ])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(hf.join("model.safetensors.index.json").is_file() && hf.join("tokenizer.json").is_file());
    let trained = Qwen3VL::from_pretrained(&out_a.join("checkpoints/step_4/model"), tch::Device::Cpu).unwrap();
    let exported = Qwen3VL::from_pretrained(&hf, tch::Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&[151644i64, 872, 198, 9707, 151645]).view([1, 5]);
    let inputs = qoq_policy::Inputs { input_ids: Some(&ids), ..Default::default() };
    let (la, _) = tch::no_grad(|| trained.prefill(&inputs)).unwrap();
    let (lb, _) = tch::no_grad(|| exported.prefill(&inputs)).unwrap();
    assert!(la.equal(&lb));
    // And it differs from the initial model: training changed the weights.
    let initial = Qwen3VL::from_pretrained(&model, tch::Device::Cpu).unwrap();
    let (l0, _) = tch::no_grad(|| initial.prefill(&inputs)).unwrap();
    assert!(!l0.equal(&la));
}

#[test]
fn bad_configs_fail_fast_naming_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    let shards = tmp.path().join("shards");
    let base = config_text(&tmp.path().join("out"), &model, &shards, "");
    let cases: [(&str, String, &str); 6] = [
        ("typo", base.replace("prompts_per_update = 2", "prompts_per_updat = 2"), "prompts_per_updat"),
        (
            "divisible",
            base.replace("prompts_per_update = 2", "prompts_per_update = 3"),
            "multiple of rl.prompts_per_update",
        ),
        ("estimator", base.replace("kl_coef = 0.01", "advantage = \"ppo\""), "advantage"),
        (
            "freeze",
            base.replace("[model]", "[model]\nfreeze = [\"visual\"]"),
            "unknown variant `visual`, expected one of `vision_tower`",
        ),
        ("clip", base.replace("kl_coef = 0.01", "dual_clip = 0.5"), "algorithm.dual_clip"),
        ("model", base.replace(&model.display().to_string(), "/nonexistent/model"), "model.path"),
    ];
    for (name, text, needle) in cases {
        let path = write_config(tmp.path(), &format!("{name}.toml"), &text);
        let start = Instant::now();
        let err = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(err.contains(needle) && err.contains(&format!("{name}.toml")), "{name}: {err}");
    }
}

#[test]
fn shipped_configs_parse() {
    // Model and shard paths need not exist here, nor a GPU: check the structure and values
    // only (through their bases) of every run configuration the repository ships.
    let mut files = Vec::new();
    for dir in ["configs", "experiments/reward-ablation", "experiments/drpo-vs-grpo", "experiments/bf16-demo"] {
        let Ok(entries) = std::fs::read_dir(repo().join(dir)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    for path in &files {
        let config = TrainConfig::parse_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config.check(false).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in
        ["demo.toml", "stage1.toml", "stage2.toml", "mimic.toml", "benchmark.toml", "f1-only.toml", "dr-grpo.toml"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} not among {names:?}");
    }
}

/// Truncates `path` to half its length.
fn truncate(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
}

#[test]
fn a_damaged_newest_checkpoint_names_the_file_and_resume_from_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = setup(tmp.path());
    let out = tmp.path().join("run");
    let cfg = write_config(tmp.path(), "run.toml", &config_text(&out, &model, &shards, ""));
    let bin = env!("CARGO_BIN_EXE_train");
    let full = Command::new(bin).arg(&cfg).output().unwrap();
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    let root = out.join("checkpoints");
    let (step3, step4) = (root.join("step_3"), root.join("step_4"));
    let uninterrupted = weights(&step4.join("model"));
    let sizes = |dir: &Path| -> Vec<(PathBuf, Option<u64>)> {
        ["trainer_state.json", "optimizer.safetensors", "model/model.safetensors", "model/config.json"]
            .iter()
            .map(|f| (dir.join(f), std::fs::metadata(dir.join(f)).ok().map(|m| m.len())))
            .collect()
    };

    // Each damage to step_4 stops --resume with that file and the way out: step_3.
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("model/model.safetensors", truncate),
        ("optimizer.safetensors", truncate),
        ("trainer_state.json", |p: &Path| std::fs::write(p, "{\"version\": 1, \"sft_steps_done\": 2,").unwrap()),
    ];
    for (i, (file, damage)) in damages.iter().enumerate() {
        let path = step4.join(file);
        let intact = std::fs::read(&path).unwrap();
        damage(&path);
        let before: Vec<_> = (1..=4).map(|n| sizes(&root.join(format!("step_{n}")))).collect();
        let resumed = Command::new(bin).arg(&cfg).arg("--resume").output().unwrap();
        let stderr = String::from_utf8_lossy(&resumed.stderr);
        assert!(!resumed.status.success(), "{file}: resumed from a damaged checkpoint");
        assert!(stderr.contains(&path.display().to_string()), "{file}: the error does not name the file: {stderr}");
        assert!(
            stderr.contains(&format!("--resume-from {}", step3.display())),
            "{file}: no --resume-from step_3: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Nothing was deleted or changed.
        assert_eq!((1..=4).map(|n| sizes(&root.join(format!("step_{n}")))).collect::<Vec<_>>(), before);
        if i + 1 < damages.len() {
            std::fs::write(&path, intact).unwrap();
        }
    }

    // --resume-from the suggested checkpoint trains step 4 again, exactly as before; the
    // damaged step_4 is kept aside, not deleted.
    let resumed = Command::new(bin).arg(&cfg).arg("--resume-from").arg(&step3).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("steps 3/4 done"), "{stderr}");
    let again = weights(&step4.join("model"));
    assert_eq!(uninterrupted.len(), again.len());
    for ((na, ta), (nb, tb)) in uninterrupted.iter().zip(&again) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the uninterrupted run and the one resumed from step_3");
    }
    assert!(root.join("step_4.superseded/trainer_state.json").is_file());
    qoq_train::checkpoint::verify(&step4).unwrap();
    // And --resume now finds the run finished.
    let done = Command::new(bin).arg(&cfg).arg("--resume").output().unwrap();
    assert!(
        done.status.success() && String::from_utf8_lossy(&done.stderr).contains("steps 4/4 done"),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // A damaged checkpoint named by --resume-from is refused, naming the file.
    let bad = Command::new(bin).arg(&cfg).arg("--resume-from").arg(root.join("step_4.superseded")).output().unwrap();
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("step_4.superseded/trainer_state.json")
    );
}
