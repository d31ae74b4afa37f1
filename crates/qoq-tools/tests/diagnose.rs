//! The `diagnose` tool driven as the issue specifies, on a tiny random checkpoint with the
//! real Qwen tokenizer (tools/setup.sh links it at .qwen-tokenizer).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use tch::Tensor;

fn run(bin: &str, args: &[&str]) -> Output {
    let path = match bin {
        "diagnose" => env!("CARGO_BIN_EXE_diagnose"),
        "make-tiny-checkpoint" => env!("CARGO_BIN_EXE_make-tiny-checkpoint"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup(dir: &Path) -> (String, String) {
    let model = dir.join("model");
    let o = run("make-tiny-checkpoint", &["--out", model.to_str().unwrap(), "--seed", "1"]);
    assert!(o.status.success(), "{} (is .qwen-tokenizer set up? bash tools/setup.sh)", stderr(&o));
    let image = dir.join("xray.png");
    image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])).save(&image).unwrap();
    (model.to_str().unwrap().to_string(), image.to_str().unwrap().to_string())
}

#[test]
fn greedy_runs_are_deterministic_and_the_dump_holds_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, image) = setup(tmp.path());
    let dump = tmp.path().join("out.safetensors");
    let args = [
        "--model",
        &model,
        "--image",
        &image,
        "--prompt",
        "What is the diagnosis?",
        "--max-new-tokens",
        "5",
        "--greedy",
    ];
    let a = run("diagnose", &[&args[..], &["--dump", dump.to_str().unwrap()]].concat());
    assert!(a.status.success(), "{}", stderr(&a));
    let b = run("diagnose", &args);
    assert_eq!(a.stdout, b.stdout, "greedy output must not change between runs");

    let t: HashMap<String, Tensor> = Tensor::read_safetensors(&dump).unwrap().into_iter().collect();
    let ids = Vec::<i64>::try_from(&t["input_ids"]).unwrap();
    // 96x64 is below the 65,536-pixel minimum: smart_resize scales it up to 320x224,
    // 20x14 patches, 70 merged tokens.
    assert_eq!(t["image_grid_thw"].size(), [1, 3]);
    assert_eq!(Vec::<i64>::try_from(t["image_grid_thw"].view([3])).unwrap(), [1, 14, 20]);
    assert_eq!(t["pixel_values"].size(), [280, 1536]);
    assert_eq!(ids.iter().filter(|&&x| x == 151_655).count(), 70);
    // <|im_start|>user\n<|vision_start|> ... <|im_start|>assistant\n
    assert_eq!(ids[0], 151_644);
    assert!(ids.contains(&151_652) && ids.contains(&151_653));
    assert_eq!(ids[ids.len() - 3], 151_644);
    assert_eq!(t["prefill_logits"].size(), [ids.len() as i64, 151_936]);
    let gen = Vec::<i64>::try_from(&t["gen_tokens"]).unwrap();
    assert!(!gen.is_empty() && gen.len() <= 5);
    let first = t["prefill_logits"].get(ids.len() as i64 - 1).argmax(-1, false).int64_value(&[]);
    assert_eq!(first, gen[0], "greedy picks the prefill's argmax");
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, image) = setup(tmp.path());
    let o = run("diagnose", &["--model", &model, "--image", "/nonexistent/x.png", "--prompt", "q", "--greedy"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot read the image /nonexistent/x.png"), "{}", stderr(&o));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run("diagnose", &["--model", empty.to_str().unwrap(), "--image", &image, "--prompt", "q", "--greedy"]);
    assert!(!o.status.success() && stderr(&o).contains("config.json"), "{}", stderr(&o));
}

/// `tests/fixtures/qwen2_5_vl/diagnose` (tools/make_qwen25vl_fixtures.py): a tiny random
/// Qwen2.5-VL over the whole Qwen2.5 vocabulary, once with transformers 5.24's nested
/// config.json (`nested/`) and once with the published flat one (`flat-config.json`), the
/// published preprocessor and tokenizer configs; `reference.safetensors` is transformers' own
/// pipeline (Qwen2_5_VLProcessor, its chat template, forward, greedy generate) on the
/// fixture's image and prompt. `diagnose --greedy --dump` must reproduce it on both folders.
#[test]
fn diagnose_matches_transformers_on_qwen2_5_vl_checkpoints_in_both_config_forms() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2_5_vl/diagnose");
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.qwen2.5-tokenizer/tokenizer.json");
    assert!(tokenizer.is_file(), "run `bash tools/setup.sh` first (it derives the Qwen2.5 tokenizer)");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let prompt = meta["prompt"].as_str().unwrap();
    let image = fixture.join(meta["image"].as_str().unwrap());
    let new_tokens = meta["new_tokens"].as_u64().unwrap().to_string();
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture.join("reference.safetensors")).unwrap().into_iter().collect();
    let want_ids = Vec::<i64>::try_from(&want["input_ids"]).unwrap();
    let want_gen = Vec::<i64>::try_from(&want["gen_tokens"]).unwrap();
    let positions = Vec::<i64>::try_from(&want["logit_positions"]).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    for form in ["nested", "flat"] {
        let dir = tmp.path().join(form);
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(fixture.join("nested")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        std::fs::copy(&tokenizer, dir.join("tokenizer.json")).unwrap();
        if form == "flat" {
            std::fs::copy(fixture.join("flat-config.json"), dir.join("config.json")).unwrap();
            let flat: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            assert!(flat.get("text_config").is_none() && flat["rope_scaling"]["type"] == "mrope", "not the flat form");
        }
        let dump = tmp.path().join(format!("{form}.safetensors"));
        let o = run(
            "diagnose",
            &[
                "--model",
                dir.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--prompt",
                prompt,
                "--max-new-tokens",
                &new_tokens,
                "--greedy",
                "--dump",
                dump.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{form}: {}", stderr(&o));
        let got: HashMap<String, Tensor> = Tensor::read_safetensors(&dump).unwrap().into_iter().collect();

        // The processor's and chat template's output.
        assert_eq!(
            Vec::<i64>::try_from(&got["input_ids"]).unwrap(),
            want_ids,
            "{form}: input ids differ from Qwen2_5_VLProcessor's"
        );
        assert!(
            got["image_grid_thw"].equal(&want["image_grid_thw"]),
            "{form}: image_grid_thw {:?}",
            got["image_grid_thw"]
        );
        assert_eq!(got["pixel_values"].size(), want["pixel_values"].size(), "{form}: pixel_values shape");
        let dp = (&got["pixel_values"] - &want["pixel_values"]).abs().max().double_value(&[]);
        assert!(dp <= 1e-6, "{form}: pixel values differ by {dp:e}");

        // Prefill logits: whole rows at a few positions, the reference's top ids everywhere.
        let logits = &got["prefill_logits"];
        assert_eq!(logits.size(), [want_ids.len() as i64, 152_064], "{form}: prefill_logits shape");
        let rows = logits.index_select(0, &want["logit_positions"]);
        let dl = (&rows - &want["logits_at"]).abs().max().double_value(&[]);
        assert!(dl <= 1e-4, "{form}: logits at positions {positions:?} differ by {dl:e}");
        let at_top = logits.gather(1, &want["top_ids"], false);
        let dt = (&at_top - &want["top_logits"]).abs().max().double_value(&[]);
        assert!(dt <= 1e-4, "{form}: logits at the reference's top-{} ids differ by {dt:e}", meta["top_k"]);
        assert!(logits.argmax(-1, false).equal(&want["top_ids"].select(1, 0)), "{form}: a position's argmax differs");

        // Greedy decoding with the KV cache: the same tokens, the same text.
        assert_eq!(
            Vec::<i64>::try_from(&got["gen_tokens"]).unwrap(),
            want_gen,
            "{form}: greedy tokens differ from model.generate's"
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
            meta["gen_text"].as_str().unwrap(),
            "{form}: response text"
        );
    }
}

/// `tests/fixtures/ecg/diagnose` (tools/make_ecg_fixtures.py): the tiny full-vocabulary
/// Qwen2.5-VL above carrying QoQ-Med's `time_series_embedding.*` weights (a small ECG-JEPA
/// encoder and its projection) and `time_series_token_id = 151665`; the reference is an
/// independent PyTorch ECG path (lead selection, z-score, encoder, projection), the Qwen2.5
/// tokenizer with `<|time_series_pad|>` added, transformers' forward with the embedding at
/// its placeholder, and greedy decoding. `diagnose --ecg` (no image) must reproduce it.
#[test]
fn diagnose_ecg_matches_an_independent_implementation_on_a_qoq_med_layout_checkpoint() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ecg/diagnose");
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.qwen2.5-tokenizer/tokenizer.json");
    assert!(tokenizer.is_file(), "run `bash tools/setup.sh` first (it derives the Qwen2.5 tokenizer)");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let want: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture.join("reference.safetensors")).unwrap().into_iter().collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture.join("model")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&tokenizer, dir.join("tokenizer.json")).unwrap();
    let dump = tmp.path().join("ecg.safetensors");
    let signal = fixture.join(meta["signal"].as_str().unwrap());
    let new_tokens = meta["new_tokens"].as_u64().unwrap().to_string();
    let o = run(
        "diagnose",
        &[
            "--model",
            dir.to_str().unwrap(),
            "--ecg",
            signal.to_str().unwrap(),
            "--prompt",
            meta["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            &new_tokens,
            "--greedy",
            "--dump",
            dump.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: HashMap<String, Tensor> = Tensor::read_safetensors(&dump).unwrap().into_iter().collect();
    assert_eq!(
        Vec::<i64>::try_from(&got["input_ids"]).unwrap(),
        Vec::<i64>::try_from(&want["input_ids"]).unwrap(),
        "input ids (placeholder first in the user turn) differ"
    );
    assert!(!got.contains_key("pixel_values"), "an ECG-only question has no image");
    let de = (&got["ecg_embeddings"] - &want["ecg_embeddings"]).abs().max().double_value(&[]);
    assert!(de <= 1e-5, "ECG embeddings differ by {de:e}");
    let rows = got["prefill_logits"].index_select(0, &want["logit_positions"]);
    let dl = (&rows - &want["logits_at"]).abs().max().double_value(&[]);
    assert!(dl <= 1e-4, "prefill logits differ by {dl:e}");
    let at_top = got["prefill_logits"].gather(1, &want["top_ids"], false);
    let dt = (&at_top - &want["top_logits"]).abs().max().double_value(&[]);
    assert!(dt <= 1e-4, "logits at the reference's top ids differ by {dt:e}");
    assert_eq!(
        Vec::<i64>::try_from(&got["gen_tokens"]).unwrap(),
        Vec::<i64>::try_from(&want["gen_tokens"]).unwrap(),
        "greedy tokens (placeholder banned) differ"
    );

    // Without an ECG path, or with a bad signal: clear errors.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2_5_vl/diagnose/nested");
    let plain_dir = tmp.path().join("plain");
    std::fs::create_dir(&plain_dir).unwrap();
    for entry in std::fs::read_dir(&plain).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, plain_dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&tokenizer, plain_dir.join("tokenizer.json")).unwrap();
    let o =
        run("diagnose", &["--model", plain_dir.to_str().unwrap(), "--ecg", signal.to_str().unwrap(), "--prompt", "q"]);
    assert!(!o.status.success() && stderr(&o).contains("has no ECG path"), "{}", stderr(&o));
    let short = tmp.path().join("short.npy");
    Tensor::zeros([12, 500], (tch::Kind::Float, tch::Device::Cpu)).write_npy(&short).unwrap();
    let o = run("diagnose", &["--model", dir.to_str().unwrap(), "--ecg", short.to_str().unwrap(), "--prompt", "q"]);
    assert!(!o.status.success() && stderr(&o).contains("short.npy"), "{}", stderr(&o));
    let o = run("diagnose", &["--model", dir.to_str().unwrap(), "--prompt", "q"]);
    assert!(!o.status.success(), "neither --image nor --ecg is refused");
}
