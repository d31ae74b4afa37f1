//! The data tools driven exactly as users and other checks drive them.

use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    let path = match bin {
        "make-synthetic" => env!("CARGO_BIN_EXE_make-synthetic"),
        "inspect-data" => env!("CARGO_BIN_EXE_inspect-data"),
        "convert-data" => env!("CARGO_BIN_EXE_convert-data"),
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
