//! The `score` tool driven exactly as the issue specifies it.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn score(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_score")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const RESPONSE: &str = "<think>Round opacity.</think>\n```json\n[{\"bbox_2d\": [0, 0, 9, 9], \"label\": \"nodule\"}]\n```\n\\boxed{Nodule, Mass}";

/// A 20x10 mask whose region is the 10x10 left half; the boxes refer to a 40x20 image.
fn fixture(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir(dir.join("masks")).unwrap();
    image::GrayImage::from_fn(20, 10, |x, _| image::Luma([if x < 10 { 255 } else { 0 }]))
        .save(dir.join("masks/left.png"))
        .unwrap();
    let input = dir.join("in.jsonl");
    write_jsonl(
        &input,
        &[
            json!({"id": "boxes", "response": RESPONSE, "answer": "nodule", "gt_boxes": [[0, 0, 10, 10], [100, 100, 120, 120]]}),
            json!({"id": "mask", "response": RESPONSE, "answer": "nodule, mass", "mask": "masks/left.png", "image_size": [40, 20]}),
            json!({"id": 7, "response": "\\boxed{", "answer": "x", "extra": "ignored"}),
        ],
    );
    input
}

#[test]
fn scores_every_line_in_order_with_every_component() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture(tmp.path());
    let out = tmp.path().join("out.jsonl");
    let o = score(&["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_jsonl(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["boxes", "mask", "7"]);
    let keys: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7);
    for k in ["f1", "iou", "format", "length", "jaccard", "overall"] {
        assert!(rows.iter().all(|r| r[k].is_f64()), "{k}");
    }
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
    // Box-vs-box: [0,0,9,9] against [0,0,10,10] (the other GT box is far away).
    assert!((f(&rows[0], "iou") - 81.0 / 100.0).abs() < 1e-12);
    assert!((f(&rows[0], "f1") - 2.0 / 3.0).abs() < 1e-12);
    // Mask resized to 40x20: region x < 20. Box pixels 0..=9 x 0..=9 all inside: 100 / 400.
    assert!((f(&rows[1], "iou") - 100.0 / 400.0).abs() < 1e-12);
    assert_eq!(f(&rows[1], "f1"), 1.0);
    assert_eq!(f(&rows[1], "format"), 1.0);
    let len = RESPONSE.chars().count() as f64 * 0.001;
    let overall = 0.5 * 1.0 + 0.3 * 0.25 + 0.1 * 1.0 + 0.1 * len;
    assert!((f(&rows[1], "overall") - overall).abs() < 1e-12);
    assert_eq!((f(&rows[2], "f1"), f(&rows[2], "iou"), f(&rows[2], "format")), (0.0, 0.0, 0.0));
}

#[test]
fn presets_and_free_weights_change_only_overall() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture(tmp.path());
    let run = |extra: &[&str]| {
        let out = tmp.path().join("out.jsonl");
        let mut args = vec!["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = score(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        read_jsonl(&out)
    };
    let base = run(&[]);
    let paper = run(&["--preset", "paper"]);
    let free = run(&["--weights", "jaccard=1"]);
    for ((b, p), w) in base.iter().zip(&paper).zip(&free) {
        for k in ["f1", "iou", "format", "length", "jaccard"] {
            assert_eq!(b[k], p[k]);
        }
        let c = |k: &str| b[k].as_f64().unwrap();
        let expected = 0.6 * c("f1") + 0.2 * c("iou") + 0.1 * c("format") + 0.1 * c("length");
        assert!((p["overall"].as_f64().unwrap() - expected).abs() < 1e-12);
        assert_eq!(w["overall"], b["jaccard"]);
    }
    let o =
        score(&["--input", input.to_str().unwrap(), "--output", "x.jsonl", "--preset", "paper", "--weights", "f1=1"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn a_malformed_line_is_named_and_the_old_output_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture(tmp.path());
    let out = tmp.path().join("out.jsonl");
    std::fs::write(&out, "previous results\n").unwrap();
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("{\"id\": \"x\", \"response\": \"r\"}\n");
    std::fs::write(&input, &text).unwrap();
    let o = score(&["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("in.jsonl line 4: missing key `answer`"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous results\n");
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"))
        .count();
    assert_eq!(leftovers, 0);

    for (line, needle) in [
        ("not json", "line 1: not valid JSON"),
        ("[1]", "line 1: expected a JSON object"),
        (
            r#"{"id": "a", "response": "r", "answer": "x", "gt_boxes": [[1, 2, 3]]}"#,
            "line 1: `gt_boxes[0]` must be [x1, y1, x2, y2]",
        ),
        (
            r#"{"id": "a", "response": "r", "answer": "x", "image_size": [0, 5]}"#,
            "line 1: `image_size` must be [width, height]",
        ),
        (r#"{"id": "a", "response": "r", "answer": "x", "mask": "missing.png"}"#, "line 1: mask 'missing.png'"),
    ] {
        std::fs::write(&input, format!("{line}\n")).unwrap();
        let o = score(&["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
        assert!(!o.status.success(), "{line}");
        assert!(stderr(&o).contains(needle), "{line}: {}", stderr(&o));
    }
}

#[test]
fn metrics_follow_the_papers_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let row = |id: &str, domain: &str, dataset: &str, pred: &str, answer: &str| json!({"id": id, "response": format!("\\boxed{{{pred}}}"), "answer": answer, "domain": domain, "dataset": dataset});
    write_jsonl(
        &input,
        &[
            row("1", "ct", "a", "x", "x"),
            row("2", "ct", "a", "y", "x"),
            row("3", "ct", "b", "z", "z"),
            row("4", "mri", "c", "w", "q"),
        ],
    );
    let (out, metrics) = (tmp.path().join("out.jsonl"), tmp.path().join("metrics.json"));
    let o = score(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    // ct/a: label x has tp 1, fn 1 -> accuracy 0.5; ct/b: 1.0; ct = 0.75; mri = 0; overall 0.375.
    assert_eq!(report["datasets"]["a"]["accuracy"], 0.5);
    assert_eq!(report["datasets"]["a"]["domain"], "ct");
    assert_eq!(report["domains"]["ct"]["accuracy"], 0.75);
    assert_eq!(report["domains"]["ct"]["datasets"], json!(["a", "b"]));
    assert_eq!(report["overall"]["accuracy"], 0.375);
    assert_eq!(report["samples"], 4);
}
