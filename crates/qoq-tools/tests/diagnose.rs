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
    let args = ["--model", &model, "--image", &image, "--prompt", "What is the diagnosis?", "--max-new-tokens", "5", "--greedy"];
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
