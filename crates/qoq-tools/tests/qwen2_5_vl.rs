//! The tools end to end on a tiny random Qwen2.5-VL (`make-tiny-checkpoint --family
//! qwen2_5_vl`, the Qwen2.5 tokenizer): `train` (2 SFT + 2 RL steps), an exact `--resume`,
//! `export` in the published weight names, the exported folder loaded back, `diagnose` on it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};

use common::{config_text, repo, weights, write_config};
use qoq_policy::{load_policy, Family, Inputs};
use qoq_train::config::TrainConfig;
use tch::{Device, Tensor};

fn run(bin: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Prefill logits of the checkpoint in `dir` on a prompt with a 56 x 56 image (grid [1, 4, 4],
/// 4 merged tokens), so the vision weights count too.
fn logits(dir: &Path) -> Tensor {
    let policy = load_policy(dir, Device::Cpu).unwrap();
    assert_eq!(policy.family(), Family::Qwen25Vl);
    let ids = Tensor::from_slice(&[151644i64, 872, 198, 151652, 151655, 151655, 151655, 151655, 151653, 9707, 151645])
        .view([1, -1]);
    tch::manual_seed(7);
    let pixels = Tensor::randn([16, 1176], (tch::Kind::Float, Device::Cpu));
    let inputs = Inputs {
        input_ids: Some(&ids),
        pixel_values: Some(&pixels),
        image_grids: vec![[1, 4, 4]],
        ..Default::default()
    };
    tch::no_grad(|| policy.prefill(&inputs)).unwrap().0
}

fn names(dir: &Path) -> BTreeSet<String> {
    weights(dir).into_iter().map(|(n, _)| n).collect()
}

/// The names of the published Qwen2.5-VL checkpoints (and of transformers' save_pretrained):
/// `visual.*`, `model.layers.*`, `model.embed_tokens.weight`, `model.norm.weight`; the tiny
/// model's head is tied, so no `lm_head.weight`.
fn assert_published_names(names: &BTreeSet<String>, what: &str) {
    assert!(
        names.iter().any(|n| n.starts_with("visual.merger.")) && names.iter().any(|n| n.starts_with("model.layers.1.")),
        "{what}: {names:?}"
    );
    assert!(
        names.contains("model.embed_tokens.weight")
            && names.contains("model.norm.weight")
            && !names.contains("lm_head.weight"),
        "{what}: {names:?}"
    );
    for n in names {
        assert!(
            n.starts_with("visual.")
                || n.starts_with("model.layers.")
                || n == "model.embed_tokens.weight"
                || n == "model.norm.weight",
            "{what}: {n} is not a published name"
        );
    }
}

#[test]
fn a_qwen2_5_vl_policy_trains_resumes_exactly_exports_in_published_names_and_diagnoses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    ok(
        run(
            env!("CARGO_BIN_EXE_make-tiny-checkpoint"),
            &["--family".as_ref(), "qwen2_5_vl".as_ref(), "--out".as_ref(), model.as_os_str()],
        ),
        "make-tiny-checkpoint (is .qwen2.5-tokenizer set up? bash tools/setup.sh)",
    );
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap()).unwrap();
    let last_added = tokenizer["added_tokens"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).max();
    assert_eq!(last_added, Some(151_664), "not the Qwen2.5 tokenizer (Qwen3's adds <think> etc. up to 151668)");
    let shards = tmp.path().join("shards");
    qoq_data::synthetic::write_synthetic(&shards, 48, 0, |_| {}).unwrap();
    let train = env!("CARGO_BIN_EXE_train");

    // A: 2 SFT + 2 RL steps, a checkpoint after each.
    let out_a = tmp.path().join("a");
    let cfg_a = write_config(tmp.path(), "a.toml", &config_text(&out_a, &model, &shards, ""));
    let a = ok(run(train, &[cfg_a.as_os_str()]), "train");
    let stdout = String::from_utf8_lossy(&a.stdout);
    assert!(
        stdout.contains("RL reward: first 10% of steps") && stdout.contains("(2 steps of this invocation)"),
        "{stdout}"
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out_a.join("rollouts/step_4.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "2 prompts x G = 2");
    assert!(rows.iter().all(|r| r["reward"].as_f64().is_some_and(f64::is_finite) && r["response"].is_string()));
    let step4 = out_a.join("checkpoints/step_4");
    // Checkpoints keep the layout the model was loaded from: make-tiny-checkpoint's published one.
    assert_published_names(&names(&step4.join("model")), "checkpoint");

    // B: the same run stopped after step 3, then --resume: bit-identical to A.
    let out_b = tmp.path().join("b");
    let cfg_b = write_config(tmp.path(), "b.toml", &config_text(&out_b, &model, &shards, ""));
    ok(run(train, &[cfg_b.as_os_str(), "--max-steps".as_ref(), "3".as_ref()]), "train --max-steps 3");
    assert!(out_b.join("checkpoints/step_3").is_dir() && !out_b.join("checkpoints/step_4").exists());
    let resumed = ok(run(train, &[cfg_b.as_os_str(), "--resume".as_ref()]), "train --resume");
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("steps 3/4 done"),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (wa, wb) = (weights(&step4.join("model")), weights(&out_b.join("checkpoints/step_4/model")));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the uninterrupted and the resumed run");
    }
    let (oa, ob) = (weights(&step4), weights(&out_b.join("checkpoints/step_4")));
    assert!(
        !oa.is_empty()
            && oa.len() == ob.len()
            && oa.iter().zip(&ob).all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb)),
        "optimizer state differs after the resume"
    );

    // Export: the published names, the weights unchanged, the side files carried.
    let hf = tmp.path().join("hf");
    let export = ok(
        run(
            env!("CARGO_BIN_EXE_export"),
            &[
                "--checkpoint".as_ref(),
                step4.as_os_str(),
                "--out".as_ref(),
                hf.as_os_str(),
                "--max-shard-bytes".as_ref(),
                "2000000".as_ref(),
            ],
        ),
        "export",
    );
    assert!(!String::from_utf8_lossy(&export.stderr).contains("no tokenizer.json"));
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        assert!(hf.join(f).is_file(), "export lacks {f}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen2_5_vl");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("model.safetensors.index.json")).unwrap()).unwrap();
    let indexed: BTreeSet<String> = index["weight_map"].as_object().unwrap().keys().cloned().collect();
    assert_published_names(&indexed, "export index");
    let exported = weights(&hf);
    assert_eq!(exported.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>(), indexed, "index and shards disagree");
    assert!(
        exported.len() == wa.len() && exported.iter().zip(&wa).all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb)),
        "export changed the weights"
    );

    // The exported folder loads and computes what the checkpoint computes, which training changed.
    let trained = logits(&step4.join("model"));
    assert!(logits(&hf).equal(&trained), "exported and checkpoint logits differ");
    assert!(!logits(&model).equal(&trained), "training left the logits unchanged");

    // diagnose on the export: Qwen2.5-VL's processor (patch 14: 1176 values per patch) from
    // the carried preprocessor_config.json, a greedy answer, the dump.
    let image = tmp.path().join("xray.png");
    image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])).save(&image).unwrap();
    let dump = tmp.path().join("d.safetensors");
    let args: [&std::ffi::OsStr; 10] = [
        "--model".as_ref(),
        hf.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--prompt".as_ref(),
        "What is the diagnosis?".as_ref(),
        "--max-new-tokens".as_ref(),
        "4".as_ref(),
        "--greedy".as_ref(),
        "--dump".as_ref(),
    ];
    ok(run(env!("CARGO_BIN_EXE_diagnose"), &[&args[..], &[dump.as_os_str()]].concat()), "diagnose");
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(&dump).unwrap().into_iter().collect();
    // 96 x 64 with factor 28 and min_pixels 3136: 84 x 56, grid [1, 4, 6], 6 merged tokens.
    assert_eq!(Vec::<i64>::try_from(t["image_grid_thw"].view([3])).unwrap(), [1, 4, 6]);
    assert_eq!(t["pixel_values"].size(), [24, 1176]);
    let ids = Vec::<i64>::try_from(&t["input_ids"]).unwrap();
    assert_eq!(ids.iter().filter(|&&x| x == 151_655).count(), 6);
    // The Qwen2-VL template: the default system prompt first.
    assert_eq!(&ids[..3], &[151_644, 8948, 198], "<|im_start|>system\\n");
    let gen = Vec::<i64>::try_from(&t["gen_tokens"]).unwrap();
    let first = t["prefill_logits"].get(ids.len() as i64 - 1).argmax(-1, false).int64_value(&[]);
    assert!(
        !gen.is_empty() && gen.len() <= 4 && gen[0] == first,
        "greedy picks the prefill's argmax: {gen:?} vs {first}"
    );
}

#[test]
fn the_qwen2_5_vl_demo_config_is_the_demo_on_the_tiny_qwen2_5_vl() {
    let demo = TrainConfig::parse_file(&repo().join("configs/demo.toml")).unwrap();
    let ours = TrainConfig::parse_file(&repo().join("configs/demo-qwen2_5_vl.toml")).unwrap();
    ours.check(false).unwrap();
    assert_eq!(ours.run.output_dir, Path::new("runs/demo-qwen2_5_vl"));
    assert_eq!(ours.model.path, Path::new("data/tiny-qwen2.5-vl"));
    assert_eq!((ours.sft.steps, ours.rl.steps, ours.run.seed), (demo.sft.steps, demo.rl.steps, demo.run.seed));
    assert_eq!(ours.data, demo.data);
    // demo.toml's pixel bounds with Qwen2.5-VL's factor 28: the synthetic 512 x 512 images
    // become 112 x 112, 16 visual tokens (as the Qwen3-VL demo's 128 x 128 with factor 32).
    let processor =
        qoq_data::preprocess::ImageProcessor::new(ours.processor.resolve_on(Family::Qwen25Vl.processor_defaults()))
            .unwrap();
    let out = processor.preprocess_image(&image::RgbImage::new(512, 512)).unwrap();
    assert_eq!(out.grid_thw, [1, 8, 8]);
}
