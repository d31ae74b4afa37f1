//! The `eval` tool: its report equals `score --metrics` on the same answers, it resumes,
//! it runs on several ranks, and it refuses a folder made with other settings.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use qoq_rewards::{RewardConfig, Scorer, Target};
use qoq_train::evaluation::{report, EvalRow};
use serde_json::Value;

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rows_of(path: &Path) -> Vec<EvalRow> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `score --metrics` over `input`, as JSON.
fn score_metrics(dir: &Path, input: &Path) -> Value {
    let metrics = dir.join("metrics.json");
    let o = run(
        env!("CARGO_BIN_EXE_score"),
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            dir.join("rescored.jsonl").to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    read_json(&metrics)
}

/// domain, dataset, response, answer, ground-truth boxes.
type Case = (&'static str, &'static str, String, &'static str, Vec<[f64; 4]>);

/// Hand-made answers covering every branch of the protocol: several labels in one answer,
/// a true label never predicted, a predicted label absent from every ground truth, no box
/// at all, no `\boxed{}`, two datasets in a domain, and a dataset name in two domains.
#[test]
fn report_of_eval_rows_equals_score_metrics_on_every_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let boxed = |labels: &str| {
        format!(
            "<think>.</think>\n```json\n[{{\"bbox_2d\": [0, 0, 9, 9], \"label\": \"x\"}}]\n```\n\\boxed{{{labels}}}"
        )
    };
    let cases: Vec<Case> = vec![
        ("chest_xray", "vindr", boxed("Nodule, Mass"), "nodule, mass", vec![[0.0, 0.0, 10.0, 10.0]]),
        ("chest_xray", "vindr", boxed("Nodule"), "nodule, effusion", vec![[0.0, 0.0, 10.0, 10.0]]),
        ("chest_xray", "vindr", boxed("Cardiomegaly"), "normal", vec![]),
        ("chest_xray", "vindr", "no boxed answer here".into(), "effusion", vec![[2.0, 2.0, 6.0, 6.0]]),
        ("chest_xray", "cbis", r"\boxed{Benign}".into(), "benign", vec![]),
        ("chest_xray", "cbis", r"\boxed{Malignant}".into(), "benign", vec![]),
        ("ecg", "ptbxl", r"\boxed{Atrial fibrillation}".into(), "atrial fibrillation", vec![]),
        ("ecg", "cbis", r"\boxed{normal}".into(), "normal", vec![]),
        ("ehr", "mimic", r"\boxed{sepsis, acute kidney injury}".into(), "acute kidney injury, pneumonia", vec![]),
    ];
    let scorer = Scorer::new(&RewardConfig::default()).unwrap();
    let rows: Vec<EvalRow> = cases
        .iter()
        .enumerate()
        .map(|(i, (domain, dataset, response, answer, boxes))| {
            let scores = scorer.score(response, &Target { answer, boxes, mask: None });
            EvalRow {
                id: format!("case-{i}"),
                sample: 0,
                dataset: dataset.to_string(),
                domain: domain.to_string(),
                response: response.clone(),
                answer: answer.to_string(),
                gt_boxes: boxes.clone(),
                image_size: None,
                mask_png: None,
                tokens: 0,
                stopped: true,
                scores,
            }
        })
        .collect();
    // Written and read back as `eval` does.
    let samples = tmp.path().join("samples.jsonl");
    let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&samples, text).unwrap();
    let expected = serde_json::to_value(report(&rows_of(&samples), Default::default())).unwrap();
    let rescored = score_metrics(tmp.path(), &samples);
    assert_eq!(rescored, expected);
    // The branches are really there: a never-predicted true label, a never-true prediction.
    let vindr = &expected["datasets"]["vindr"]["labels"];
    assert_eq!(vindr["effusion"]["tp"], 0);
    assert_eq!(vindr["effusion"]["fn"], 2);
    assert!(vindr.get("cardiomegaly").is_none(), "only ground-truth labels count: {vindr}");
    assert!(expected["datasets"]["chest_xray/cbis"].is_object() && expected["datasets"]["ecg/cbis"].is_object());
    assert_eq!(expected["domains"]["chest_xray"]["datasets"].as_array().unwrap().len(), 2);
    let f1 = |v: &Value| v["f1"].as_f64().unwrap();
    let domain_mean =
        (f1(&expected["domains"]["chest_xray"]) + f1(&expected["domains"]["ecg"]) + f1(&expected["domains"]["ehr"]))
            / 3.0;
    assert!((f1(&expected["overall"]) - domain_mean).abs() < 1e-12);
    assert!(expected["domains"]["ehr"]["jaccard"].as_f64().unwrap() > 0.0);
    assert!(expected["overall"]["reward"]["overall"].is_f64());
}

fn eval_args<'a>(model: &'a str, shards: &'a str, config: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--model",
        model,
        "--data",
        shards,
        "--config",
        config,
        "--out",
        out,
        "--split",
        "train",
        "--batch",
        "3",
        "--max-new-tokens",
        "5",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn eval_writes_rescorable_samples_resumes_and_merges_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, shards) = common::setup(tmp.path());
    let config_text = common::config_text(&tmp.path().join("unused"), &model, &shards, "");
    let config = common::write_config(tmp.path(), "run.toml", &config_text);
    let (model, shards, config) = (model.to_str().unwrap(), shards.to_str().unwrap(), config.to_str().unwrap());
    let eval = env!("CARGO_BIN_EXE_eval");

    // One rank, in two invocations: 5 samples, then the remaining 5 of 10.
    let one = tmp.path().join("one");
    let one_s = one.to_str().unwrap();
    let o = run(eval, &eval_args(model, shards, config, one_s, &["--max-samples", "5"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows_of(&one.join("samples.jsonl")).len(), 5);
    let o = run(eval, &eval_args(model, shards, config, one_s, &["--max-samples", "10"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("answered 5 samples (5 already in"), "{}", stderr(&o));
    let rows = rows_of(&one.join("samples.jsonl"));
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each sample once");
    assert!(rows.iter().all(|r| r.tokens <= 5 && !r.domain.is_empty() && !r.answer.is_empty()));
    // The report is `score --metrics` over the same file (masks and boxes included).
    let written = read_json(&one.join("report.json"));
    assert_eq!(written, score_metrics(tmp.path(), &one.join("samples.jsonl")));
    assert_eq!(written["samples"], 10);
    assert!(std::fs::read_to_string(one.join("report.md")).unwrap().contains("| F1 |"));

    // A torn last line (a killed run) is dropped and its sample answered again.
    let text = std::fs::read_to_string(one.join("samples.jsonl")).unwrap();
    std::fs::write(one.join("samples.jsonl"), &text[..text.len() - 20]).unwrap();
    let o = run(eval, &eval_args(model, shards, config, one_s, &["--max-samples", "10"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("torn last line") && stderr(&o).contains("answered 1 samples"), "{}", stderr(&o));
    assert_eq!(rows_of(&one.join("samples.jsonl")).len(), 10);

    // Other settings into the same folder: refused, nothing lost.
    let o = run(eval, &eval_args(model, shards, config, one_s, &["--max-samples", "10", "--temperature", "0.5"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
    assert_eq!(rows_of(&one.join("samples.jsonl")).len(), 10);

    // Two ranks answer the same 10 greedily: the same rows and the same report.
    let two = tmp.path().join("two");
    let o =
        run(eval, &eval_args(model, shards, config, two.to_str().unwrap(), &["--max-samples", "10", "--nproc", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut a = rows_of(&one.join("samples.jsonl"));
    let mut b = rows_of(&two.join("samples.jsonl"));
    a.sort_by(|x, y| x.id.cmp(&y.id));
    b.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        a.iter().map(|r| (&r.id, &r.response)).collect::<Vec<_>>(),
        b.iter().map(|r| (&r.id, &r.response)).collect::<Vec<_>>()
    );
    let (ra, rb) = (read_json(&one.join("report.json")), read_json(&two.join("report.json")));
    assert_eq!(ra["overall"], rb["overall"]);
}

#[test]
fn eval_rejects_bad_flags_with_a_clear_error() {
    let eval = env!("CARGO_BIN_EXE_eval");
    let o = run(eval, &["--model", "m", "--data", "d", "--out", "o", "--samples", "4"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--samples 4 needs --temperature"), "{}", stderr(&o));
    let o = run(eval, &["--model", "/nonexistent/model", "--data", "d", "--out", "/tmp/qoq-eval-never"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
}
