//! `train CONFIG --plan`: the memory plan reads the run configuration and the model's
//! config.json only (a folder holding nothing else), plans Qwen3-VL-8B from the shipped
//! configs/models/qwen3-vl-8b/config.json with its 8.77 B parameters, ends with
//! `peak per rank: X GiB`, and fails naming the peak and the limit when it does not fit.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::repo;

/// A run of configs/stage2.toml (device "cuda": never touched by the plan) whose
/// model.path holds Qwen3-VL-8B's config.json and nothing else.
fn stage2_on_8b(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("qwen3-vl-8b");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(repo().join("configs/models/qwen3-vl-8b/config.json"), model.join("config.json")).unwrap();
    let config = dir.join("run.toml");
    let base = repo().join("configs/stage2.toml");
    let text = format!(
        "base = {:?}\n[run]\noutput_dir = {:?}\n[model]\npath = {:?}\n",
        base.display().to_string(),
        dir.join("out").display().to_string(),
        model.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn plan(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train")).arg(config).arg("--plan").args(args).output().unwrap()
}

#[test]
fn qwen3_vl_8b_is_planned_from_its_config_alone_with_8_77_b_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stage2_on_8b(tmp.path());
    let out = plan(&config, &["--world-size", "8"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The folder still holds config.json alone: nothing was written or needed beside it.
    let files: Vec<_> = std::fs::read_dir(tmp.path().join("qwen3-vl-8b")).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert!(!tmp.path().join("out").exists(), "the plan created the run's output folder");

    let count: i64 = stdout
        .lines()
        .find_map(|l| l.split_once(" parameters, ").map(|(head, _)| head.rsplit(' ').next().unwrap().replace(',', "")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no parameter count in:\n{stdout}"));
    // Qwen3-VL-8B: 8.77 B parameters; the sum of the published shapes is 8,767,123,696.
    assert!((count as f64 - 8.77e9).abs() / 8.77e9 < 1e-3, "{count}");
    assert_eq!(count, 8_767_123_696);
    assert!(stdout.contains("bfloat16; device cuda; 8 rank(s), sharding: full"), "{stdout}");
    for term in ["parameters", "AdamW moments", "gradients", "reference model", "gathered layers", "KV cache"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(term)), "no {term} in:\n{stdout}");
    }

    let last = stdout.lines().last().unwrap();
    let gib =
        last.strip_prefix("peak per rank: ").and_then(|r| r.strip_suffix(" GiB")).unwrap_or_else(|| panic!("{last}"));
    let gib: f64 = gib.parse().unwrap_or_else(|_| panic!("{last}"));
    assert!(gib > 0.0 && last == format!("peak per rank: {gib:.2} GiB"), "{last}");
}

#[test]
fn a_plan_over_the_device_memory_fails_naming_the_peak_and_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stage2_on_8b(tmp.path());
    let out = plan(&config, &["--world-size", "8", "--device-memory-gb", "1"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap();
    let peak = last.strip_prefix("peak per rank: ").unwrap();
    assert!(
        stderr.contains(&format!("peak per rank {peak}")) && stderr.contains("--device-memory-gb 1 GiB"),
        "{stderr}"
    );

    // A roomy limit passes.
    let out = plan(&config, &["--world-size", "8", "--device-memory-gb", "100000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The paper's workload (512 x 5 rollouts of 4,096 + 4,096 tokens, the k3 reference) as
/// configs/stage2.toml sets it: bf16, full sharding, token-budget micro-batches.
#[test]
fn stage2_fits_qwen3_vl_8b_on_8_gpus_of_80_gb() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stage2_on_8b(tmp.path());
    let out = plan(&config, &["--world-size", "8", "--device-memory-gb", "80"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}
{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kv_cache_gb = 12 holds 10 rollout slots of 8,192 positions (1.15 GiB each in bf16).
    assert!(
        stdout.contains("rollouts in 10 slots of 4096 prompt + 4096 new tokens, 2 prompts (x G 5) per prefill"),
        "{stdout}"
    );
    // One GPU cannot hold the model state of a full fine-tune (16 B per parameter).
    let out = plan(&config, &["--world-size", "1", "--device-memory-gb", "141"]);
    assert!(!out.status.success());
}

#[test]
fn a_model_folder_without_config_json_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stage2_on_8b(tmp.path());
    std::fs::remove_file(tmp.path().join("qwen3-vl-8b/config.json")).unwrap();
    let out = plan(&config, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("qwen3-vl-8b/config.json"), "{stderr}");
}
