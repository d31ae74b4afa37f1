//! Parity with transformers' Qwen3VLForConditionalGeneration on tiny random checkpoints
//! (tools/make_policy_fixtures.py; every parameter randomised). fp32 prefill logits and
//! per-step decode logits through the KV cache must agree within 1e-4 (we see ~1e-6).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{case, case_meta, fixtures, grids, inputs};
use qoq_policy::{EcgEncoderConfig, EcgInit, ModuleGroup, Policy, Qwen3VL};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Prefill and 6 greedy decode steps against the fixture; returns the worst logit diff.
fn check(name: &str, model_dir: &str) -> f64 {
    let t = case(name);
    assert_eq!(case_meta(name)["model"], model_dir);
    let model = Qwen3VL::from_pretrained(&fixtures().join(model_dir), Device::Cpu).unwrap();
    let inputs = inputs(&t);
    let _guard = tch::no_grad_guard();
    let (logits, mut state) = model.prefill(&inputs).unwrap();
    let mask = t["attention_mask"].ne(0).unsqueeze(-1);
    let expected = &t["logits"];
    let prefill_diff =
        max_diff(&logits.masked_fill(&mask.logical_not(), 0.0), &expected.masked_fill(&mask.logical_not(), 0.0));
    assert!(prefill_diff < TOLERANCE, "{name}: prefill logits differ by {prefill_diff}");

    let tokens = &t["gen_tokens"];
    let steps = &t["step_logits"];
    let last = logits.select(1, -1);
    let mut worst = prefill_diff.max(max_diff(&last, &steps.select(1, 0)));
    for s in 1..tokens.size()[1] {
        let step = model.decode_step(&mut state, &tokens.select(1, s - 1)).unwrap();
        let diff = max_diff(&step, &steps.select(1, s));
        assert!(diff < TOLERANCE, "{name}: decode step {s} logits differ by {diff}");
        assert_eq!(
            Vec::<i64>::try_from(step.argmax(-1, false)).unwrap(),
            Vec::<i64>::try_from(tokens.select(1, s)).unwrap(),
            "{name}: greedy token {s}"
        );
        worst = worst.max(diff);
    }
    assert_eq!(logits.kind(), Kind::Float);
    eprintln!("{name}: max |logit diff| {worst:.2e}");
    worst
}

#[test]
fn text_only() {
    check("text_only", "tiny-untied");
}

#[test]
fn one_image() {
    check("one_image", "tiny-untied");
}

#[test]
fn two_images_in_one_prompt() {
    check("two_images", "tiny-untied");
}

#[test]
fn video_with_two_temporal_patches() {
    check("video", "tiny-untied");
}

#[test]
fn left_padded_batch() {
    check("batch_left_padded", "tiny-untied");
}

#[test]
fn tied_head_and_457_config() {
    check("tied_one_image", "tiny-tied");
}

#[test]
fn rope_positions_and_deltas_match_the_reference() {
    for name in ["one_image", "two_images", "video", "batch_left_padded"] {
        let t = case(name);
        let ids = Vec::<Vec<i64>>::try_from(&t["input_ids"]).unwrap();
        let mask = Vec::<Vec<i64>>::try_from(&t["attention_mask"]).unwrap();
        let index = qoq_policy::qwen3_vl::rope_index(
            &ids,
            &mask,
            &grids(t.get("image_grid_thw")),
            &grids(t.get("video_grid_thw")),
            1000,
            1001,
            2,
        )
        .unwrap();
        let expected = Vec::<Vec<Vec<i64>>>::try_from(&t["position_ids"]).unwrap();
        let deltas = Vec::<Vec<i64>>::try_from(&t["rope_deltas"]).unwrap();
        for (row, r) in index.iter().enumerate() {
            for (axis, positions) in r.positions.iter().enumerate() {
                assert_eq!(positions, &expected[axis][row], "{name} row {row} axis {axis}");
            }
            assert_eq!(r.delta, deltas[row][0], "{name} row {row} delta");
        }
    }
}

/// tiny-untied split into the shards its committed transformers index names.
fn sharded_copy(dir: &Path) {
    let src = fixtures().join("tiny-untied-sharded");
    for f in ["config.json", "model.safetensors.index.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut shards: HashMap<String, Vec<(String, Tensor)>> = HashMap::new();
    for (name, t) in Tensor::read_safetensors(fixtures().join("tiny-untied/model.safetensors")).unwrap() {
        let file = index["weight_map"][&name].as_str().unwrap().to_string();
        shards.entry(file).or_default().push((name, t));
    }
    assert_eq!(shards.len(), 2);
    for (file, tensors) in shards {
        Tensor::write_safetensors(&tensors, dir.join(file)).unwrap();
    }
}

#[test]
fn sharded_checkpoint_loads_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_copy(tmp.path());
    let single = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let sharded = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap();
    let (a, b) = (single.vs.variables(), sharded.vs.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name}");
    }
}

#[test]
fn broken_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-untied");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let err = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("neither model.safetensors nor model.safetensors.index.json"), "{err}");

    // A weight file missing a tensor.
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "model.language_model.norm.weight")
        .collect();
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let err = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("1 weights are missing, e.g. model.language_model.norm.weight"), "{err}");

    // A config that disagrees with the weights.
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["text_config"]["intermediate_size"] = 96.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let err = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors: `model.language_model.layers.0.mlp.") && err.contains("the config gives"),
        "{err}"
    );
    assert!(
        err.contains("[64, 128], the config gives [64, 96]") || err.contains("[128, 64], the config gives [96, 64]"),
        "{err}"
    );
}

#[test]
fn save_then_load_round_trips_single_and_sharded() {
    let model = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    for (max_bytes, files) in [(u64::MAX, 1usize), (600_000, 3)] {
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path(), max_bytes).unwrap();
        let weights = qoq_policy::weights::weight_files(tmp.path()).unwrap();
        assert_eq!(weights.len(), files);
        let again = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap();
        assert_eq!(again.config, model.config);
        for (name, t) in model.vs.variables() {
            assert!(t.equal(&again.vs.variables()[&name]), "{name}");
        }
    }
    // The tied model keeps no lm_head in its file, as transformers writes it.
    let tied = Qwen3VL::from_pretrained(&fixtures().join("tiny-tied"), Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    tied.save_pretrained(tmp.path(), u64::MAX).unwrap();
    let names: Vec<String> =
        Tensor::read_safetensors(tmp.path().join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n == "lm_head.weight") && names.len() == 98, "{}", names.len());
}

#[test]
fn bfloat16_weights_stay_close_to_float32() {
    let t = case("one_image");
    let mut model = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    model.set_kind(Kind::BFloat16);
    let _guard = tch::no_grad_guard();
    let (logits, _) = model.prefill(&inputs(&t)).unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    let diff = max_diff(&logits.to_kind(Kind::Float), &t["logits"]);
    // Logits reach ~14; bf16 keeps 8 bits of mantissa.
    assert!(diff < 0.5, "bf16 logits differ by {diff}");
    let agree = logits
        .argmax(-1, false)
        .eq_tensor(&t["logits"].argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(agree > 0.9, "bf16 argmax agrees on {agree:.2} of positions");
}

#[test]
fn an_added_ecg_path_embeds_at_its_placeholder_and_survives_a_save() {
    let mut model = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let sizes = EcgEncoderConfig { embed_dim: 16, depth: 1, num_heads: 4, mlp_dim: 32, ..Default::default() };
    // The tiny vocabulary has no row 151669: the default id is refused, naming the key.
    let err = model.add_ecg(&EcgInit::Random { seed: 3 }, Some(sizes)).unwrap_err().to_string();
    assert!(err.contains("time_series_token_id") && err.contains("outside the embedding"), "{err}");
    assert!(model.ecg().is_none());

    // A tiny checkpoint with an ECG path: config.json names a free row.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-untied"), tmp.path());
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["time_series_token_id"] = serde_json::json!(900);
    config["time_series_encoder"] = serde_json::to_value(sizes).unwrap();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("weights are missing") && err.contains("time_series_embedding."), "{err}");
    // Weights from a model given a random path.
    let donor = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let vars = donor.vs.variables();
    let mut ts = Vec::new();
    {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let built = qoq_policy::TimeSeriesEmbedding::new(
            &vs.root(),
            &qoq_policy::EcgConfig { token_id: 900, encoder: sizes },
            vars["model.language_model.embed_tokens.weight"].size()[1],
        );
        assert_eq!(built.token_id(), 900);
        for (n, t) in vs.variables() {
            ts.push((n, t.copy()));
        }
    }
    let mut all: Vec<(String, Tensor)> = vars.into_iter().collect();
    all.extend(ts);
    let refs: Vec<(&str, Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect();
    Tensor::write_safetensors(&refs, tmp.path().join("model.safetensors")).unwrap();

    let model = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap();
    let ecg = model.ecg().expect("the checkpoint's ECG path");
    assert_eq!(ecg.token_id(), 900);
    assert!(model.special_tokens().banned.contains(&900), "sampling never emits the placeholder");
    assert_eq!(model.module_group("time_series_embedding.encoder.W_P.weight"), ModuleGroup::EcgEncoder);
    assert_eq!(model.module_group("time_series_embedding.linear.bias"), ModuleGroup::EcgProjection);

    let _guard = tch::no_grad_guard();
    let t = case("text_only");
    let ids = t["input_ids"].copy();
    let _ = ids.get(0).index_fill_(0, &Tensor::from_slice(&[3i64]), 900);
    let signals = Tensor::randn([1, 8, 2500], (Kind::Float, Device::Cpu));
    let mut inputs = inputs(&t);
    inputs.input_ids = Some(&ids);
    let err = model.prefill(&inputs).unwrap_err().to_string();
    assert!(err.contains("1 ECG placeholder tokens but no ECG signals"), "{err}");
    let two = Tensor::cat(&[&signals, &signals], 0);
    inputs.ecg_signals = Some(&two);
    let err = model.prefill(&inputs).unwrap_err().to_string();
    assert!(err.contains("1 ECG placeholder tokens but the ECG inputs give 2"), "{err}");
    inputs.ecg_signals = Some(&signals);
    let (logits, _) = model.prefill(&inputs).unwrap();
    // A different ECG changes the prompt's logits from the placeholder on, not before it.
    let other = &signals * 2.0;
    inputs.ecg_signals = Some(&other);
    let (logits2, _) = model.prefill(&inputs).unwrap();
    assert!(max_diff(&logits.narrow(1, 0, 3), &logits2.narrow(1, 0, 3)) < 1e-6);
    assert!(max_diff(&logits.narrow(1, 3, 1), &logits2.narrow(1, 3, 1)) > 1e-4);

    // Saved and loaded again: the same weights, the key written back, the same logits.
    let out = tempfile::tempdir().unwrap();
    Policy::save_pretrained(&model, out.path(), u64::MAX).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["time_series_token_id"], 900);
    let again = Qwen3VL::from_pretrained(out.path(), Device::Cpu).unwrap();
    inputs.ecg_signals = Some(&signals);
    let (logits3, _) = again.prefill(&inputs).unwrap();
    assert!(max_diff(&logits, &logits3) == 0.0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn bfloat16_checkpoints_load_into_float32_parameters() {
    let mut model = Qwen3VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    model.set_kind(Kind::BFloat16);
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), u64::MAX).unwrap();
    let header = Tensor::read_safetensors(tmp.path().join("model.safetensors")).unwrap();
    assert!(header.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
    let loaded = Qwen3VL::from_pretrained(tmp.path(), Device::Cpu).unwrap();
    for (name, t) in loaded.vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name}");
        assert!(t.equal(&model.vs.variables()[&name].to_kind(Kind::Float)), "{name}");
    }
}
