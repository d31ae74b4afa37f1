//! The data tools driven exactly as users and other checks drive them.

use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    let path = match bin {
        "make-synthetic" => env!("CARGO_BIN_EXE_make-synthetic"),
        "inspect-data" => env!("CARGO_BIN_EXE_inspect-data"),
        "convert-data" => env!("CARGO_BIN_EXE_convert-data"),
        "pretrain-ecg-encoder" => env!("CARGO_BIN_EXE_pretrain-ecg-encoder"),
        other => panic!("unknown binary {other}"),
    };
    Command::new(path).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn synthetic(dir: &Path, n: usize) {
    let o = run("make-synthetic", &["--out", dir.to_str().unwrap(), "--samples", &n.to_string(), "--seed", "3"]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn make_synthetic_kind_ecg_writes_the_climb_sets_ecg_rows_and_refuses_to_share_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ecg");
    let o = run("make-synthetic", &["--kind", "ecg", "--out", dir.to_str().unwrap(), "--samples", "20", "--seed", "3"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let set = qoq_data::ShardSet::open(&dir).unwrap();
    assert_eq!(set.num_rows(), 20);
    let rows = set.read_rows(0, 0, &(0..20).collect::<Vec<_>>(), &[]).unwrap();
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row.domain, "ecg");
        assert!(row.ecg.is_some(), "row {n} carries its signal");
        assert_eq!(row.id, qoq_data::synthetic::generate(3, n * 17 + 8).id, "the climb set's ECG rows, in order");
    }
    assert_eq!(rows.iter().filter(|r| r.split == "val").count(), 2, "1 in 10 is val");
    // The climb set's shards beside them would be read as one set.
    let mixed = run("make-synthetic", &["--out", dir.to_str().unwrap(), "--samples", "5"]);
    assert!(!mixed.status.success() && text(&mixed).1.contains("--kind ecg"), "{:?}", text(&mixed));
}

#[test]
fn pretrain_ecg_encoder_writes_a_loadable_encoder_and_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("enc/encoder.safetensors");
    let args =
        ["--out", out.to_str().unwrap(), "--sizes", "32,1,64", "--steps", "3", "--train", "16", "--held-out", "8"];
    let o = run("pretrain-ecg-encoder", &args);
    assert!(o.status.success(), "{:?}", text(&o));
    let tensors: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    assert_eq!(tensors["time_series_embedding.encoder.W_P.weight"].size(), [32, 50]);
    assert_eq!(tensors["time_series_embedding.encoder.pos_embed"].size(), [400, 32]);
    assert!(tensors.keys().all(|k| k.starts_with("time_series_embedding.encoder.")), "the head is not kept");
    let sizes = qoq_policy::ecg::encoder_sizes(&out).unwrap().unwrap();
    assert_eq!((sizes.embed_dim, sizes.depth, sizes.num_heads, sizes.mlp_dim), (32, 1, 16, 64));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("enc/encoder.safetensors.json")).unwrap())
            .unwrap();
    assert_eq!(summary["steps"], 3);
    assert!(summary["held_out_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)));
    // The same seed gives the same encoder.
    let again = tmp.path().join("again.safetensors");
    let o = run("pretrain-ecg-encoder", &[&["--out", again.to_str().unwrap()], &args[2..]].concat());
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    // Sizes the encoder cannot have are refused before any work.
    let bad = run("pretrain-ecg-encoder", &["--out", again.to_str().unwrap(), "--sizes", "30,1,64"]);
    assert!(!bad.status.success() && text(&bad).1.contains("--sizes"), "{:?}", text(&bad));
}

#[test]
fn make_synthetic_writes_exactly_n_rows_and_keeps_existing_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("syn");
    synthetic(&dir, 37);
    assert_eq!(qoq_data::ShardSet::open(&dir).unwrap().num_rows(), 37);
    let again = run("make-synthetic", &["--out", dir.to_str().unwrap(), "--samples", "5"]);
    assert!(!again.status.success());
    assert!(text(&again).1.contains("--force"));
    assert_eq!(qoq_data::ShardSet::open(&dir).unwrap().num_rows(), 37, "nothing was lost");
    let forced = run("make-synthetic", &["--out", dir.to_str().unwrap(), "--samples", "5", "--force"]);
    assert!(forced.status.success());
    assert_eq!(qoq_data::ShardSet::open(&dir).unwrap().num_rows(), 5);
}

#[test]
fn inspect_data_summarises_a_good_set_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic(tmp.path(), 34);
    let o = run("inspect-data", &[tmp.path().to_str().unwrap(), "--preprocess"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // 34 rows in the 10:4:2:1 cycle of 17: 20 chest_xray, 8 mammography, 4 dermoscopy, 2 ecg.
    for (domain, rows) in [("chest_xray", 20), ("mammography", 8), ("dermoscopy", 4), ("ecg", 2)] {
        let line = out.lines().find(|l| l.starts_with(domain)).unwrap_or_else(|| panic!("no {domain} row in\n{out}"));
        assert_eq!(line.split_whitespace().nth(2), Some(rows.to_string().as_str()), "{line}");
    }
    assert!(out.contains("bad: 0"), "{out}");
    assert!(out.contains("preprocessed 34 images/videos"), "{out}");
}

#[test]
fn inspect_data_fails_on_a_truncated_shard_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic(tmp.path(), 300);
    let victim = tmp.path().join("synthetic-00001.parquet");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 100]).unwrap();
    let o = run("inspect-data", &[tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("synthetic-00001.parquet"), "{:?}", text(&o));
}

#[test]
fn inspect_data_fails_past_the_bad_row_fraction() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = qoq_data::ShardWriter::new(tmp.path(), "mixed").unwrap();
    for i in 0..10 {
        let mut s = qoq_data::synthetic::generate(1, i);
        if i % 5 == 0 {
            s.images[0].truncate(100); // undecodable
        }
        w.write(s).unwrap();
    }
    w.finish().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let strict = run("inspect-data", &[dir]);
    let (out, err) = text(&strict);
    assert!(!strict.status.success(), "{out}");
    assert!(err.contains("too many bad rows: 2 of 10"), "{err}");
    assert!(out.contains("mixed-00000.parquet row 0"), "{out}");
    let lenient = run("inspect-data", &[dir, "--max-bad-fraction", "0.25"]);
    assert!(lenient.status.success(), "{:?}", text(&lenient));
}

#[test]
fn convert_data_then_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("mammo").join("cbis");
    std::fs::create_dir_all(ds.join("jpegs")).unwrap();
    image::GrayImage::from_pixel(40, 30, image::Luma([77])).save(ds.join("jpegs/a.png")).unwrap();
    std::fs::write(
        ds.join("annotation_test.jsonl"),
        concat!(
            r#"{"images": ["jpegs/a.png"], "conversations": [{"from": "human", "value": "<image>\nWhich BIRAD? Answer with one of the following:\nBIRAD 1\nBIRAD 2"}, {"from": "gpt", "value": "BIRAD 2"}]}"#,
            "\n",
            r#"{"images": ["jpegs/missing.png"], "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "BIRAD 1"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("shards");
    let o = run(
        "convert-data",
        &[
            "--format",
            "climb",
            "--input",
            ds.join("annotation_test.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-bad-fraction",
            "0.5",
        ],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 rows written, 1 bad of 2 lines"), "{stdout}");
    assert!(stdout.contains("line 2") && stdout.contains("missing.png"), "{stdout}");
    let o = run("inspect-data", &[out.to_str().unwrap()]);
    let (stdout, _) = text(&o);
    assert!(o.status.success());
    assert!(stdout.lines().any(|l| l.starts_with("mammography") && l.contains("cbis")), "{stdout}");

    let bad = run("convert-data", &["--format", "xray", "--input", "x", "--out", "y"]);
    assert!(!bad.status.success());
    assert!(text(&bad).1.contains("climb"), "{:?}", text(&bad));
}
