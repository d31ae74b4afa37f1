//! The run configuration: every sampling value is checked (the error names the file, the
//! key and the value), the device is checked against this build of libtorch before
//! anything loads, `[algorithm]` and `model.dtype` are read into their types, and `base`
//! lays one file over another.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{config_text, write_config};
use qoq_policy::ModuleGroup;
use qoq_rewards::Preset;
use qoq_train::advantage::{AdvantageConfig, DomainMean, Estimator, KSelection};
use qoq_train::config::{DeviceConfig, Dtype, TrainConfig};
use qoq_train::loss::{Aggregation, LossConfig};

/// A folder that passes the model-folder checks (nothing loads it here).
fn fake_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    std::fs::write(model.join("tokenizer.json"), "{}").unwrap();
    (model, dir.join("shards"))
}

/// `text` with `key = value` set in `[table]`: the key's line replaced, or added under the
/// table's header (the table is appended when absent).
fn with_key(text: &str, table: &str, key: &str, value: &str) -> String {
    let header = format!("[{table}]");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        return format!("{text}\n{header}\n{key} = {value}\n");
    };
    let end = lines
        .iter()
        .skip(start + 1)
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let line = format!("{key} = {value}");
    match (start + 1..end).find(|&i| lines[i].split('=').next().is_some_and(|k| k.trim() == key)) {
        Some(i) => lines[i] = line,
        None => lines.insert(start + 1, line),
    }
    lines.join("\n") + "\n"
}

fn load(dir: &Path, name: &str, text: &str) -> Result<TrainConfig, String> {
    TrainConfig::from_file(&write_config(dir, &format!("{name}.toml"), text)).map_err(|e| e.to_string())
}

#[test]
fn every_sampling_value_is_checked_naming_the_file_key_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = fake_inputs(tmp.path());
    let base = config_text(&tmp.path().join("out"), &model, &shards, "");
    load(tmp.path(), "good", &base).unwrap();
    // (table, key, bad value, what the error shows of the value)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("rl", "temperature", "-1.0", "-1"),
        ("rl", "temperature", "0.0", "got 0"),
        ("rl", "temperature", "nan", "NaN"),
        ("rl", "temperature", "inf", "inf"),
        ("rl", "top_p", "0.0", "got 0"),
        ("rl", "top_p", "1.5", "1.5"),
        ("rl", "top_p", "nan", "NaN"),
        ("rl", "top_k", "-3", "-3"),
        ("rl", "top_k", "-1", "-1"),
        ("rl", "max_new_tokens", "0", "got 0"),
        ("rl", "samples_per_prompt", "1", "got 1"),
        ("rl", "samples_per_prompt", "0", "got 0"),
        ("rl", "micro_batch", "0", "got 0"),
        ("rl", "generation_batch", "0", "got 0"),
        ("rl", "rollout_slots", "1", "(1) must be at least rl.samples_per_prompt"),
        ("rl", "kv_cache_gb", "0.0", "got 0"),
        ("rl", "kv_cache_gb", "nan", "NaN"),
        ("rl", "prompts_per_step", "0", "got 0"),
        ("sft", "micro_batch", "0", "got 0"),
        ("validation", "temperature", "-0.5", "-0.5"),
        ("validation", "temperature", "nan", "NaN"),
        ("validation", "max_new_tokens", "0", "got 0"),
        ("validation", "batch_size", "0", "got 0"),
        ("validation", "max_samples", "0", "got 0"),
    ];
    for (i, &(table, key, value, shown)) in cases.iter().enumerate() {
        let name = format!("case{i}");
        let start = Instant::now();
        let err = load(tmp.path(), &name, &with_key(&base, table, key, value)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        let ok =
            err.contains(&format!("{name}.toml")) && err.contains(&format!("{table}.{key}")) && err.contains(shown);
        assert!(ok, "{table}.{key} = {value}: {err}");
    }
    // Dr.GRPO is group-relative as well: one response per prompt has nothing to learn from.
    let dr = with_key(&with_key(&base, "algorithm", "advantage", "\"dr_grpo\""), "rl", "samples_per_prompt", "1");
    assert!(load(tmp.path(), "dr", &dr).unwrap_err().contains("rl.samples_per_prompt"));
    // A wrong type names the key too.
    let err = load(tmp.path(), "hot", &with_key(&base, "rl", "temperature", "\"hot\"")).unwrap_err();
    assert!(err.contains("temperature") && err.contains("hot.toml"), "{err}");
    // The edges that are valid: greedy validation, top-k and top-p off.
    let edges = with_key(
        &with_key(&with_key(&base, "rl", "top_k", "0"), "rl", "top_p", "1.0"),
        "validation",
        "temperature",
        "0.0",
    );
    load(tmp.path(), "edges", &edges).unwrap();
}

#[test]
fn cuda_on_a_build_without_it_fails_before_anything_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = fake_inputs(tmp.path());
    let base = config_text(&tmp.path().join("out"), &model, &shards, "");
    for (device, parsed) in
        [("cpu", DeviceConfig::Cpu), ("cuda", DeviceConfig::Cuda), ("cuda:1", DeviceConfig::CudaIndex(1))]
    {
        let config = TrainConfig::parse_file(&write_config(
            tmp.path(),
            "d.toml",
            &with_key(&base, "run", "device", &format!("{device:?}")),
        ))
        .unwrap();
        assert_eq!(config.run.device, parsed);
        assert_eq!(config.run.device.to_string(), device);
    }
    for bad in ["gpu", "cuda:x", "cuda:", "CPU"] {
        let err = load(tmp.path(), "unknown", &with_key(&base, "run", "device", &format!("{bad:?}"))).unwrap_err();
        assert!(err.contains("run.device") && err.contains(bad) && err.contains("unknown.toml"), "{bad}: {err}");
    }
    if tch::Cuda::is_available() {
        eprintln!("CUDA is available here: the CPU-only error cannot be checked");
        return;
    }
    for device in ["cuda", "cuda:0", "cuda:3"] {
        let path = write_config(tmp.path(), "gpu.toml", &with_key(&base, "run", "device", &format!("{device:?}")));
        let start = Instant::now();
        let err = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(1));
        for needle in [
            "gpu.toml",
            "run.device",
            device,
            "bash tools/setup-cuda.sh",
            "target/cuda/release/train",
            "run.device = \"cpu\"",
        ] {
            assert!(err.contains(needle), "{device}: {needle:?} missing in: {err}");
        }
        // The train binary stops with that message instead of a panic inside tch.
        let out = Command::new(env!("CARGO_BIN_EXE_train")).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("tools/setup-cuda.sh") && !stderr.contains("panicked"),
            "{stderr}"
        );
        assert!(!tmp.path().join("out").exists(), "nothing is written before the device is known to work");
    }
    // The shipped GPU configs keep "cuda" and validate; only this machine lacks it.
    let stage2 = TrainConfig::parse_file(&common::repo().join("configs/stage2.toml")).unwrap();
    assert_eq!(stage2.run.device, DeviceConfig::Cuda);
    assert!(stage2.run.device.available(0).unwrap_err().contains("tools/setup-cuda.sh"));
}

#[test]
fn dtype_and_algorithm_are_read_into_their_types_with_todays_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = fake_inputs(tmp.path());
    let base = config_text(&tmp.path().join("out"), &model, &shards, "");
    let plain = base.replace("[algorithm]\nkl_coef = 0.01\n", "");
    let c = load(tmp.path(), "plain", &plain).unwrap();
    assert_eq!(c.model.dtype, Dtype::Float32);
    let a = &c.algorithm.advantages;
    assert_eq!(*a, AdvantageConfig::default());
    assert_eq!(
        (
            a.estimator,
            a.sort_group_rewards,
            a.history_window,
            a.k_max,
            a.elbow_tol,
            a.domain_mean,
            a.clusters,
            a.kl_damping,
            a.kl_damping_quantile,
            a.eps
        ),
        (Estimator::Drpo, true, None, 10, 0.1, DomainMean::InverseClusterSize, true, false, 0.75, 1e-6)
    );
    let l = &c.algorithm.loss;
    assert_eq!(*l, LossConfig::default());
    assert_eq!(
        (l.clip_low, l.clip_high, l.dual_clip, l.kl_coef, l.aggregation),
        (0.2, 0.3, Some(3.0), 1e-4, Aggregation::TokenMean)
    );
    assert!(c.algorithm.needs_reference());

    // Every option is settable, eps included; dual_clip = 0 is off.
    let all = plain
        + "[algorithm]\nadvantage = \"grpo\"\nsort_group_rewards = false\nhistory_window = 64\nk_max = 3\nelbow_tol = 0.2\n\
           domain_mean = \"plain\"\nclusters = false\nkl_damping = true\nkl_damping_quantile = 0.5\neps = 1e-4\n\
           kmeans_restarts = 4\nk_selection = \"fixed\"\nfixed_k = 2\n\
           clip_low = 0.1\nclip_high = 0.25\ndual_clip = 0\nkl_coef = 0.0\nloss_agg = \"seq-mean-token-mean\"\n";
    let c = load(tmp.path(), "all", &all).unwrap();
    let expected = AdvantageConfig {
        estimator: Estimator::Grpo,
        sort_group_rewards: false,
        history_window: Some(64),
        k_max: 3,
        elbow_tol: 0.2,
        domain_mean: DomainMean::Plain,
        clusters: false,
        kl_damping: true,
        kl_damping_quantile: 0.5,
        eps: 1e-4,
        kmeans_restarts: 4,
        k_selection: KSelection::Fixed,
        fixed_k: 2,
    };
    assert_eq!(c.algorithm.advantages, expected);
    assert_eq!(
        c.algorithm.loss,
        LossConfig {
            clip_low: 0.1,
            clip_high: 0.25,
            dual_clip: None,
            kl_coef: 0.0,
            aggregation: Aggregation::SeqMeanTokenMean
        }
    );
    assert!(!c.algorithm.needs_reference(), "KL damping reads the reference only under DRPO");

    // Errors name the key: unknown, mistyped, out of range; bf16 gradients without bf16 weights.
    let cases = [
        ("algorithm", "epsilon", "1e-4", "algorithm.epsilon"),
        ("algorithm", "k_max", "\"x\"", "algorithm.k_max"),
        ("algorithm", "clip_high", "\"x\"", "algorithm.clip_high"),
        ("algorithm", "eps", "0.5", "algorithm.eps"),
        ("algorithm", "advantage", "\"ppo\"", "ppo"),
        ("model", "grad_dtype", "\"bfloat16\"", "needs model.dtype = \"bfloat16\""),
        ("model", "dtype", "\"float64\"", "dtype"),
        ("distributed", "sharding", "\"zero3\"", "zero3"),
    ];
    for (i, (table, key, value, needle)) in cases.into_iter().enumerate() {
        let err = load(tmp.path(), &format!("bad{i}"), &with_key(&base, table, key, value)).unwrap_err();
        assert!(err.contains(needle) && err.contains(&format!("bad{i}.toml")), "{table}.{key} = {value}: {err}");
    }

    // distributed.sharding, and the older sharded_optimizer = true, which it must not contradict.
    use qoq_train::config::Sharding;
    assert_eq!(c_sharding(tmp.path(), &base, &[]), Ok(Sharding::None));
    assert_eq!(c_sharding(tmp.path(), &base, &[("sharding", "\"full\"")]), Ok(Sharding::Full));
    assert_eq!(c_sharding(tmp.path(), &base, &[("sharded_optimizer", "true")]), Ok(Sharding::Optimizer));
    let err =
        c_sharding(tmp.path(), &base, &[("sharding", "\"gradients\""), ("sharded_optimizer", "true")]).unwrap_err();
    assert!(err.contains("sharded_optimizer = true and distributed.sharding = \"gradients\" disagree"), "{err}");

    // [sft.optim] keeps the SFT learning rate when the table is written without lr.
    let sft = with_key(&base.replace("lr = 1e-3\n\n[rl]", "weight_decay = 0.5\n\n[rl]"), "sft", "steps", "2");
    let c = load(tmp.path(), "sft", &sft).unwrap();
    assert_eq!((c.sft.optim.lr, c.sft.optim.weight_decay), (qoq_train::config::SFT_LR, 0.5));
}

#[test]
fn base_lays_a_file_over_another_key_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = fake_inputs(tmp.path());
    let bases = tmp.path().join("bases");
    std::fs::create_dir_all(&bases).unwrap();
    let full =
        with_key(&config_text(&tmp.path().join("out"), &model, &shards, ""), "rl.optim", "weight_decay", "0.125");
    let full = with_key(&full, "model", "freeze", "[\"llm\"]");
    write_config(&bases, "full.toml", &full);
    // A middle file in the same folder as its base, a top file one folder up.
    write_config(&bases, "middle.toml", "base = \"full.toml\"\n[rl]\nsteps = 7\nmax_new_tokens = 9\n");
    let top = write_config(
        tmp.path(),
        "top.toml",
        "base = \"bases/middle.toml\"\n[run]\noutput_dir = \"elsewhere\"\n[model]\nfreeze = [\"merger\"]\n[rl]\nmax_new_tokens = 11\n[rl.optim]\nlr = 0.5\n",
    );
    let c = TrainConfig::from_file(&top).unwrap();
    assert_eq!(c.run.output_dir, PathBuf::from("elsewhere"));
    assert_eq!(c.run.seed, 3, "a key the override does not set keeps the base's value");
    assert_eq!(c.model.freeze, vec![ModuleGroup::Merger], "arrays are replaced, not merged");
    assert_eq!(c.model.path, model);
    assert_eq!((c.rl.steps, c.rl.max_new_tokens, c.rl.prompts_per_step), (7, 11, 2));
    assert_eq!((c.rl.optim.lr, c.rl.optim.weight_decay), (0.5, 0.125), "sub-tables merge key by key");
    assert_eq!(c.algorithm.loss.kl_coef, 0.01);

    // An error in the merged table names the top file, its bases and the key.
    let typo = write_config(tmp.path(), "typo.toml", "base = \"bases/full.toml\"\n[rl]\ntemprature = 1.0\n");
    let err = TrainConfig::from_file(&typo).unwrap_err().to_string();
    assert!(err.contains("typo.toml") && err.contains("full.toml") && err.contains("temprature"), "{err}");
    let bad = write_config(tmp.path(), "bad.toml", "base = \"bases/full.toml\"\n[rl]\ntop_k = -3\n");
    let err = TrainConfig::from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("rl.top_k") && err.contains("-3"), "{err}");
    // A missing base names it; a cycle is refused; base must be a string.
    let missing = write_config(tmp.path(), "missing.toml", "base = \"nowhere.toml\"\n");
    let err = TrainConfig::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.toml") && err.contains("nowhere.toml"), "{err}");
    write_config(tmp.path(), "a.toml", "base = \"b.toml\"\n");
    write_config(tmp.path(), "b.toml", "base = \"a.toml\"\n");
    let err = TrainConfig::from_file(&tmp.path().join("a.toml")).unwrap_err().to_string();
    assert!(err.contains("cycle"), "{err}");
    // Explicit reward weights over a base's preset replace it (and the reverse); one file
    // setting both is still refused.
    let preset =
        with_key(&config_text(&tmp.path().join("out"), &model, &shards, ""), "reward", "preset", "\"qoq-med3\"");
    write_config(&bases, "preset.toml", &preset);
    let reweighed = write_config(
        tmp.path(),
        "reweighed.toml",
        "base = \"bases/preset.toml\"\n[reward]\nweights = { f1 = 0.8, format = 0.2 }\n",
    );
    let c = TrainConfig::from_file(&reweighed).unwrap();
    assert_eq!((c.reward.preset, c.reward.weights.map(|w| (w.f1, w.format, w.iou))), (None, Some((0.8, 0.2, 0.0))));
    let back = write_config(tmp.path(), "back.toml", "base = \"reweighed.toml\"\n[reward]\npreset = \"paper\"\n");
    let c = TrainConfig::from_file(&back).unwrap();
    assert_eq!((c.reward.preset, c.reward.weights), (Some(Preset::Paper), None));
    let both = write_config(
        tmp.path(),
        "both.toml",
        "base = \"bases/preset.toml\"\n[reward]\npreset = \"paper\"\nweights = { f1 = 1.0 }\n",
    );
    assert!(TrainConfig::from_file(&both).unwrap_err().to_string().contains("keep one"));
    let number = write_config(tmp.path(), "number.toml", "base = 3\n");
    assert!(TrainConfig::from_file(&number).unwrap_err().to_string().contains("base must be a path string"));
}

#[test]
fn stage1_is_stage2_with_its_overrides() {
    let configs = common::repo().join("configs");
    let stage1 = TrainConfig::parse_file(&configs.join("stage1.toml")).unwrap();
    let mut stage2 = TrainConfig::parse_file(&configs.join("stage2.toml")).unwrap();
    stage1.check(false).unwrap();
    assert_eq!(stage1.run.output_dir, PathBuf::from("runs/stage1"));
    // The paper's stage 1: an ECG-JEPA encoder, frozen; projection and LLM train on ECG rows.
    assert_eq!(stage1.model.freeze, vec![ModuleGroup::EcgEncoder]);
    assert_eq!(stage1.model.ecg_encoder.as_deref(), Some("models/ecg-jepa/multiblock_epoch100.pth"));
    assert_eq!(stage1.data["shards"].as_str(), Some("data/climb-ecg/train"));
    assert_eq!(stage1.rl.steps, 100);
    assert_eq!(stage1.run.device, DeviceConfig::Cuda);
    // Everything else is stage 2's.
    stage2.run.output_dir = stage1.run.output_dir.clone();
    stage2.model.freeze = stage1.model.freeze.clone();
    stage2.model.ecg_encoder = stage1.model.ecg_encoder.clone();
    stage2.data.insert("shards".into(), stage1.data["shards"].clone());
    stage2.rl.steps = stage1.rl.steps;
    assert_eq!(format!("{stage1:?}"), format!("{stage2:?}"));
}

/// The sharding a config with `keys` set in `[distributed]` asks for (checked as `train` checks).
fn c_sharding(dir: &Path, base: &str, keys: &[(&str, &str)]) -> Result<qoq_train::config::Sharding, String> {
    let text = keys.iter().fold(base.to_string(), |t, (k, v)| with_key(&t, "distributed", k, v));
    let c = load(dir, "sharding", &text)?;
    c.check(false)?;
    Ok(c.distributed.sharding())
}
