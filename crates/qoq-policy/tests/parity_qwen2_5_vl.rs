//! Parity with transformers 5.24's Qwen2_5_VLForConditionalGeneration on tiny random
//! checkpoints (tools/make_qwen25vl_fixtures.py; every parameter randomised): fp32 prefill
//! logits, every decode step's logits through the KV cache within 1e-4, greedy tokens
//! equal, the vision tower's merged features, window order and rope positions. Also both
//! weight name sets, both config forms, saving in the loaded layout, and unused tensors.

use std::collections::HashMap;
use std::path::PathBuf;

use qoq_policy::qwen2_5_vl::{rope_index, window_index, NameLayout, RopeInputs};
use qoq_policy::Grid;
use qoq_policy::{load_policy, Family, Inputs, Policy, Qwen25VL};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2_5_vl")
}

fn case(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("cases/{name}.safetensors"))).unwrap().into_iter().collect()
}

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("cases/{name}.json"))).unwrap()).unwrap()
}

fn grids(t: Option<&Tensor>) -> Vec<Grid> {
    t.map(|t| Vec::<Vec<i64>>::try_from(t).unwrap().into_iter().map(|g| [g[0], g[1], g[2]]).collect())
        .unwrap_or_default()
}

fn inputs(t: &HashMap<String, Tensor>) -> Inputs<'_> {
    Inputs {
        input_ids: t.get("input_ids"),
        attention_mask: t.get("attention_mask"),
        pixel_values: t.get("pixel_values"),
        image_grids: grids(t.get("image_grid_thw")),
        pixel_values_videos: t.get("pixel_values_videos"),
        video_grids: grids(t.get("video_grid_thw")),
        video_seconds_per_grid: t
            .get("second_per_grid_ts")
            .map(|s| Vec::<f64>::try_from(s.to_kind(Kind::Double)).unwrap())
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Prefill and 6 greedy decode steps against the fixture; returns the worst logit diff.
fn check(name: &str) -> f64 {
    let t = case(name);
    let model_dir = meta(name)["model"].as_str().unwrap().to_string();
    let model = load_policy(&fixtures().join(&model_dir), Device::Cpu).unwrap();
    assert_eq!(model.family(), Family::Qwen25Vl);
    let inputs = inputs(&t);
    let _guard = tch::no_grad_guard();
    let (logits, mut state) = model.prefill(&inputs).unwrap();
    assert_eq!(logits.kind(), Kind::Float);
    let pad = t["attention_mask"].eq(0).unsqueeze(-1);
    let prefill = max_diff(&logits.masked_fill(&pad, 0.0), &t["logits"].masked_fill(&pad, 0.0));
    assert!(prefill < TOLERANCE, "{name}: prefill logits differ by {prefill}");
    let tokens = &t["gen_tokens"];
    let steps = &t["step_logits"];
    let mut worst = prefill.max(max_diff(&logits.select(1, -1), &steps.select(1, 0)));
    assert_eq!(
        Vec::<i64>::try_from(logits.select(1, -1).argmax(-1, false)).unwrap(),
        Vec::<i64>::try_from(tokens.select(1, 0)).unwrap()
    );
    let decode_positions = Vec::<Vec<i64>>::try_from(&t["decode_position_ids"]).unwrap();
    for s in 1..tokens.size()[1] {
        let expected: Vec<i64> = decode_positions.iter().map(|row| row[s as usize - 1]).collect();
        assert_eq!(state.next_positions(), expected.as_slice(), "{name}: decode position {s}");
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
    eprintln!("{name}: max |logit diff| {worst:.2e}");
    worst
}

#[test]
fn text_only() {
    check("text_only");
}

#[test]
fn image_grid_not_a_multiple_of_the_window() {
    check("one_image");
}

#[test]
fn image_grid_an_exact_multiple_of_the_window() {
    check("image_window_multiple");
}

#[test]
fn two_images() {
    check("two_images");
}

#[test]
fn video_with_scaled_time() {
    check("video");
}

#[test]
fn image_then_video_with_fractional_time() {
    check("image_then_video_fractional");
}

#[test]
fn left_padded_batch() {
    check("batch_left_padded");
}

#[test]
fn tied_head_and_the_published_flat_config() {
    check("tied_one_image");
}

#[test]
fn vision_tower_window_order_and_merged_features() {
    let model = Qwen25VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let _guard = tch::no_grad_guard();
    let mut checked = 0;
    for name in [
        "one_image",
        "image_window_multiple",
        "two_images",
        "video",
        "image_then_video_fractional",
        "batch_left_padded",
    ] {
        let t = case(name);
        for (what, pixels) in [("image", "pixel_values"), ("video", "pixel_values_videos")] {
            let Some(pixels) = t.get(pixels) else { continue };
            let g = grids(t.get(&format!("{what}_grid_thw")));
            let (order, lengths) = window_index(&g, 2, model.config.merger_window());
            assert_eq!(
                order,
                Vec::<i64>::try_from(&t[&format!("{what}_window_index")]).unwrap(),
                "{name} {what}: window index"
            );
            // transformers' cumulative window lengths in patches, empty windows repeated.
            let cu = Vec::<i64>::try_from(&t[&format!("{what}_cu_window_seqlens")]).unwrap();
            let mut ours = vec![0i64];
            for l in lengths.iter().filter(|&&l| l > 0) {
                ours.push(ours.last().unwrap() + l * 4);
            }
            cu.windows(2).for_each(|w| assert!(w[1] >= w[0]));
            let mut dedup = cu.clone();
            dedup.dedup();
            assert_eq!(ours, dedup, "{name} {what}: window lengths");
            let (merged, taps) = model.vision_tower().forward(pixels, &g);
            assert!(taps.is_empty());
            let diff = max_diff(&merged, &t[&format!("{what}_embeds")]);
            assert!(diff < 1e-5, "{name} {what}: merged features differ by {diff}");
            checked += 1;
        }
    }
    assert_eq!(checked, 7);
}

#[test]
fn rope_positions_and_deltas_match_the_reference() {
    let model = Qwen25VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    for name in ["text_only", "one_image", "two_images", "video", "image_then_video_fractional", "batch_left_padded"] {
        let t = case(name);
        let ids = Vec::<Vec<i64>>::try_from(&t["input_ids"]).unwrap();
        let mask = Vec::<Vec<i64>>::try_from(&t["attention_mask"]).unwrap();
        let i = inputs(&t);
        let r = RopeInputs {
            image_grids: &i.image_grids,
            video_grids: &i.video_grids,
            seconds_per_grid: &i.video_seconds_per_grid,
            image_token_id: 1000,
            video_token_id: 1001,
            merge: 2,
            tokens_per_second: model.config.vision_config.tokens_per_second,
        };
        let index = rope_index(&ids, &mask, &r).unwrap();
        let expected = Vec::<Vec<Vec<i64>>>::try_from(&t["position_ids"]).unwrap();
        let deltas = Vec::<Vec<i64>>::try_from(&t["rope_deltas"]).unwrap();
        for (row, got) in index.iter().enumerate() {
            for (axis, positions) in got.positions.iter().enumerate() {
                assert_eq!(positions, &expected[axis][row], "{name} row {row} axis {axis}");
            }
            assert_eq!(got.delta, deltas[row][0], "{name} row {row} delta");
        }
    }
}

#[test]
fn values_come_from_the_file_not_class_defaults() {
    let untied = Qwen25VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let tied = Qwen25VL::from_pretrained(&fixtures().join("tiny-tied"), Device::Cpu).unwrap();
    for m in [&untied, &tied] {
        assert_eq!(m.config.text_config.rms_norm_eps, 1e-6);
        assert_eq!(m.config.vision_config.tokens_per_second, 2.0);
        assert_eq!(m.config.text_config.mrope_section, [2, 3, 3]);
        assert_eq!(m.config.vision_config.fullatt_block_indexes, [1, 3]);
        assert_eq!(m.layout, NameLayout::Published);
    }
    assert!(tied.config.tie_word_embeddings && !untied.config.tie_word_embeddings);
    assert_eq!(tied.config.text_config, untied.config.text_config);
}

/// The fixture's weights renamed into transformers' in-memory set.
fn in_memory_copy(dir: &std::path::Path, extra: &[(&str, Tensor)]) {
    let src = fixtures().join("tiny-untied");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (qoq_policy::qwen2_5_vl::in_memory_name(&n), t))
        .collect();
    tensors.extend(extra.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())));
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn both_name_sets_load_and_save_in_their_own_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let ecg = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
    in_memory_copy(tmp.path(), &[("time_series_embedding.proj.weight", ecg.shallow_clone())]);
    let published = Qwen25VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let memory = Qwen25VL::from_pretrained(tmp.path(), Device::Cpu).unwrap();
    assert_eq!(memory.layout, NameLayout::InMemory);
    assert_eq!(memory.extra_tensor_names(), ["time_series_embedding.proj.weight"]);
    for (name, t) in published.vs.variables() {
        assert!(t.equal(&memory.vs.variables()[&name]), "{name}");
    }
    // Saved back: the in-memory names, the unused tensor kept.
    let out = tempfile::tempdir().unwrap();
    memory.save_pretrained(out.path(), u64::MAX).unwrap();
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(out.path().join("model.safetensors")).unwrap().into_iter().collect();
    assert!(
        saved.contains_key("model.visual.merger.ln_q.weight") && saved.contains_key("model.language_model.norm.weight")
    );
    assert!(saved["time_series_embedding.proj.weight"].equal(&ecg));
    // The published layout saves as published, config.json as it was read.
    let out2 = tempfile::tempdir().unwrap();
    published.save_pretrained(out2.path(), 600_000).unwrap();
    let names: Vec<String> = qoq_policy::weights::weight_files(out2.path())
        .unwrap()
        .iter()
        .flat_map(|f| Tensor::read_safetensors(f).unwrap().into_iter().map(|(n, _)| n))
        .collect();
    assert!(
        names.iter().any(|n| n == "visual.merger.ln_q.weight")
            && names.iter().any(|n| n == "model.layers.0.self_attn.q_proj.bias")
    );
    assert!(!names.iter().any(|n| n.starts_with("model.visual.") || n.starts_with("model.language_model.")));
    let read =
        |p: PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(read(out2.path().join("config.json")), read(fixtures().join("tiny-untied/config.json")));
    let again = Qwen25VL::from_pretrained(out2.path(), Device::Cpu).unwrap();
    let t = case("one_image");
    let _guard = tch::no_grad_guard();
    let (a, _) = published.prefill(&inputs(&t)).unwrap();
    let (b, _) = again.prefill(&inputs(&t)).unwrap();
    assert!(a.equal(&b));
}

#[test]
fn unknown_model_types_list_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
    let err = load_policy(tmp.path(), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("config.json: model_type `llava` is not supported; supported: qwen3_vl, qwen2_5_vl"), "{err}");
    // Auto-dispatch: the Qwen3-VL fixtures load as Qwen3-VL.
    let qwen3 = load_policy(&fixtures().join("../policy/tiny-untied"), Device::Cpu).unwrap();
    assert_eq!(qwen3.family(), Family::Qwen3Vl);
}

#[test]
fn module_groups_cover_every_parameter() {
    use qoq_policy::ModuleGroup;
    let model = Qwen25VL::from_pretrained(&fixtures().join("tiny-untied"), Device::Cpu).unwrap();
    let mut counts: HashMap<ModuleGroup, usize> = HashMap::new();
    for name in model.vs.variables().keys() {
        *counts.entry(model.module_group(name)).or_default() += 1;
    }
    // merger: ln_q + mlp.0 + mlp.2 (weights and biases); tower: patch + 4 blocks x 12.
    assert_eq!(counts[&ModuleGroup::Merger], 5);
    assert_eq!(counts[&ModuleGroup::VisionTower], 1 + 4 * 12);
    assert_eq!(counts[&ModuleGroup::Llm], 93 - 5 - 49);
}
