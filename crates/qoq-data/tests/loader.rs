//! The loader on real parquet files written by the tests: order, shuffling, sharding,
//! resume, mixing, projection, other writers' types, and every kind of bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use qoq_data::{synthetic, Cursor, DataError, LabeledBox, Loader, LoaderConfig, Sample, ShardWriter, Signal};

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_pixel(w, h, image::Luma([90])).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn sample(i: usize, domain: &str) -> Sample {
    Sample {
        id: format!("s{i:04}"),
        dataset: format!("{domain}_set"),
        domain: domain.into(),
        modality: "image".into(),
        split: "train".into(),
        problem: format!("question {i}"),
        answer: format!("label{}", i % 3),
        choices: vec!["label0".into(), "label1".into(), "label2".into()],
        images: vec![png(8, 6)],
        boxes: vec![LabeledBox { bbox: [1.0, 1.0, 4.0, 5.0], label: "label0".into() }],
        extra: "{}".into(),
        ..Default::default()
    }
}

/// 3 shards x row groups of 7: `n` rows, domains a : b = 3 : 1.
fn write_set(dir: &Path, n: usize) -> Vec<Sample> {
    let samples: Vec<Sample> = (0..n).map(|i| sample(i, if i % 4 == 3 { "b" } else { "a" })).collect();
    let mut w = ShardWriter::new(dir, "t").unwrap().rows_per_file(n.div_ceil(3)).rows_per_row_group(7);
    for s in &samples {
        w.write(s.clone()).unwrap();
    }
    assert_eq!(w.finish().unwrap().len(), 3);
    samples
}

fn ids(loader: Loader) -> Vec<String> {
    loader.map(|s| s.unwrap().id).collect()
}

fn cfg() -> LoaderConfig {
    LoaderConfig::default()
}

#[test]
fn unshuffled_pass_returns_every_row_in_file_order_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_set(dir.path(), 50);
    let read: Vec<Sample> = Loader::open(dir.path(), cfg()).unwrap().map(Result::unwrap).collect();
    assert_eq!(read, written);
}

#[test]
fn memory_holds_one_window_not_the_set() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 200); // row groups of 7
    for shuffle in [false, true] {
        let mut loader = Loader::open(dir.path(), LoaderConfig { shuffle, window_row_groups: 2, ..cfg() }).unwrap();
        let mut max_buffered = 0;
        while let Some(s) = loader.next() {
            s.unwrap();
            max_buffered = max_buffered.max(loader.buffered() + 1);
        }
        assert!(max_buffered <= 14, "shuffle {shuffle}: {max_buffered} samples held at once");
    }
}

#[test]
fn ecg_and_masks_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sample(0, "ecg");
    s.ecg = Some(Signal { leads: 2, samples: 3, sampling_rate_hz: 250.0, values: vec![0.5, 1.5, -2.0, 3.0, 4.0, 5.0] });
    s.mask = Some(png(8, 6));
    s.videos = vec![vec![png(4, 4), png(4, 4)]];
    let mut w = ShardWriter::new(dir.path(), "e").unwrap();
    w.write(s.clone()).unwrap();
    w.finish().unwrap();
    let back: Vec<Sample> = Loader::open(dir.path(), cfg()).unwrap().map(Result::unwrap).collect();
    assert_eq!(back, vec![s]);
}

#[test]
fn shuffled_epochs_are_permutations_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 60);
    let run =
        |seed| ids(Loader::open(dir.path(), LoaderConfig { shuffle: true, seed, epochs: Some(2), ..cfg() }).unwrap());
    let a = run(1);
    assert_eq!(a.len(), 120);
    let (e0, e1) = a.split_at(60);
    let all: BTreeSet<_> = (0..60).map(|i| format!("s{i:04}")).collect();
    assert_eq!(e0.iter().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(e1.iter().cloned().collect::<BTreeSet<_>>(), all);
    assert_ne!(e0, e1, "each epoch is reshuffled");
    assert_ne!(e0, all.iter().cloned().collect::<Vec<_>>().as_slice(), "shuffled");
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
}

#[test]
fn ranks_get_disjoint_complete_shares() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 61);
    for world in [2, 3, 4] {
        let mut seen = BTreeMap::new();
        for rank in 0..world {
            let c = LoaderConfig { shuffle: true, seed: 5, rank, world_size: world, ..cfg() };
            for id in ids(Loader::open(dir.path(), c).unwrap()) {
                assert!(seen.insert(id, rank).is_none(), "a row reached two ranks");
            }
        }
        assert_eq!(seen.len(), 61, "world {world}");
    }
}

#[test]
fn resume_from_cursor_continues_with_exactly_the_next_sample() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 45);
    let c = LoaderConfig { shuffle: true, seed: 9, epochs: Some(3), rank: 1, world_size: 2, ..cfg() };
    let full = ids(Loader::open(dir.path(), c.clone()).unwrap());
    for cut in [0, 1, 7, 22, 23, 30, full.len()] {
        let mut first = Loader::open(dir.path(), c.clone()).unwrap();
        let head: Vec<String> = first.by_ref().take(cut).map(|s| s.unwrap().id).collect();
        // The cursor goes through a checkpoint as JSON.
        let saved = serde_json::to_string(&first.cursor()).unwrap();
        drop(first);
        let mut resumed = Loader::open(dir.path(), c.clone()).unwrap();
        resumed.seek(serde_json::from_str::<Cursor>(&saved).unwrap()).unwrap();
        let tail = ids(resumed);
        assert_eq!([head, tail].concat(), full, "cut at {cut}");
    }
}

#[test]
fn a_cursor_from_other_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 20);
    let mut l = Loader::open(dir.path(), cfg()).unwrap();
    let err = l.seek(Cursor { epoch: 0, position: 999, fingerprint: 0 }).unwrap_err();
    assert!(err.to_string().contains("past the"), "{err}");
}

#[test]
fn domain_weights_set_each_domains_share() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 400); // a : b = 300 : 100
    let mut weights = BTreeMap::new();
    weights.insert("a".to_string(), 1.0);
    weights.insert("b".to_string(), 1.0);
    let c = LoaderConfig { shuffle: true, seed: 3, domain_weights: Some(weights.clone()), ..cfg() };
    let got: Vec<Sample> = Loader::open(dir.path(), c).unwrap().map(Result::unwrap).collect();
    let b = got.iter().filter(|s| s.domain == "b").count() as f64 / got.len() as f64;
    assert!((0.42..0.58).contains(&b), "domain b share {b}");
    assert!((340..460).contains(&got.len()), "epoch length stays about N: {}", got.len());

    weights.remove("b");
    let c = LoaderConfig { domain_weights: Some(weights), ..cfg() };
    let err = Loader::open(dir.path(), c).err().unwrap();
    assert!(err.to_string().contains("domain `b`"), "{err}");
}

#[test]
fn projection_reads_only_the_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 10);
    let c = LoaderConfig { columns: vec!["id".into(), "domain".into(), "problem".into(), "answer".into()], ..cfg() };
    let got: Vec<Sample> = Loader::open(dir.path(), c).unwrap().map(Result::unwrap).collect();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|s| s.images.is_empty() && s.boxes.is_empty() && !s.answer.is_empty()));
    let bad = LoaderConfig { columns: vec!["pixels".into()], ..cfg() };
    assert!(Loader::open(dir.path(), bad).err().unwrap().to_string().contains("unknown column `pixels`"));
}

#[test]
fn pandas_written_shards_are_read() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pandas/pandas_written.parquet");
    let got: Vec<Sample> = Loader::open(&path, cfg()).unwrap().map(Result::unwrap).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].answer, "nodule, pleural effusion");
    assert_eq!(got[0].boxes, vec![LabeledBox { bbox: [1.0, 2.0, 30.0, 40.0], label: "nodule".into() }]);
    assert_eq!(got[0].dataset, "chest_xray", "dataset defaults to the domain");
    assert_eq!(got[0].modality, "image");
    assert_eq!(
        got[1].ecg,
        Some(Signal { leads: 2, samples: 3, sampling_rate_hz: 250.0, values: vec![0.5, -0.25, 1.0, 2.0, 0.0, 0.125] })
    );
    assert_eq!(got[1].modality, "ecg");
}

// ---- bad input -------------------------------------------------------------------------

fn write_batch(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema =
        Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

#[test]
fn missing_or_empty_directory_is_a_clear_error() {
    let err = Loader::open("/nonexistent/qoq-shards", cfg()).err().unwrap();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/qoq-shards"));
    let empty = tempfile::tempdir().unwrap();
    let err = Loader::open(empty.path(), cfg()).err().unwrap();
    assert!(matches!(err, DataError::NoShards { .. }), "{err}");
}

#[test]
fn truncated_or_corrupt_parquet_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 30);
    let victim = dir.path().join("t-00001.parquet");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let err = Loader::open(dir.path(), cfg()).err().unwrap();
    assert!(matches!(err, DataError::Parquet { .. }), "{err}");
    assert!(err.to_string().contains("t-00001.parquet"), "{err}");

    // Garbage inside the data pages, footer intact: the error surfaces while reading.
    let mut bytes = bytes.clone();
    let third = bytes.len() / 3;
    for b in &mut bytes[4..third] {
        *b = 0xA5;
    }
    std::fs::write(&victim, &bytes).unwrap();
    let mut saw_error = false;
    if let Ok(loader) = Loader::open(dir.path(), cfg()) {
        for item in loader {
            if let Err(e) = item {
                assert!(e.to_string().contains("t-00001.parquet"), "{e}");
                saw_error = true;
            }
        }
    } else {
        saw_error = true;
    }
    assert!(saw_error, "corrupt pages must not pass silently");
}

#[test]
fn missing_required_column_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(
        &dir.path().join("x.parquet"),
        vec![("id", strings(&["a"])), ("domain", strings(&["ct"])), ("problem", strings(&["q"]))],
    );
    let err = Loader::open(dir.path(), cfg()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, DataError::MissingColumn { .. }), "{msg}");
    assert!(msg.contains("x.parquet") && msg.contains("`answer`"), "{msg}");
}

#[test]
fn mistyped_column_names_file_column_and_types() {
    let dir = tempfile::tempdir().unwrap();
    write_batch(
        &dir.path().join("y.parquet"),
        vec![
            ("id", strings(&["a"])),
            ("domain", strings(&["ct"])),
            ("problem", strings(&["q"])),
            ("answer", Arc::new(Int64Array::from(vec![3]))),
        ],
    );
    let err = Loader::open(dir.path(), cfg()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, DataError::ColumnType { .. }), "{msg}");
    assert!(msg.contains("y.parquet") && msg.contains("`answer`") && msg.contains("Int64"), "{msg}");
    let _ = DataType::Utf8;
}

/// 40 good rows and 4 bad ones of four kinds, at known positions.
fn write_with_bad_rows(dir: &Path) -> Vec<(usize, &'static str)> {
    let mut samples: Vec<Sample> = (0..44).map(|i| sample(i, "a")).collect();
    samples[3].images = vec![b"\x89PNG\r\n\x1a\nnot really".to_vec()];
    samples[10].boxes[0].bbox = [0.0, 0.0, 50.0, 5.0];
    samples[21].answer = "  ".into();
    samples[37].ecg = Some(Signal { leads: 1, samples: 3, sampling_rate_hz: 100.0, values: vec![0.0, f32::NAN, 1.0] });
    let mut w = ShardWriter::new(dir, "bad").unwrap().rows_per_file(100).rows_per_row_group(8);
    for s in samples {
        w.write(s).unwrap();
    }
    w.finish().unwrap();
    vec![(3, "images[0]"), (10, "outside the 8x6 image"), (21, "empty answer"), (37, "not finite")]
}

#[test]
fn bad_rows_are_skipped_and_reported_with_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_with_bad_rows(dir.path());
    let mut loader = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 0.2, ..cfg() }).unwrap();
    let good: Vec<Sample> = loader.by_ref().map(Result::unwrap).collect();
    assert_eq!(good.len(), 40);
    let stats = loader.bad_rows();
    assert_eq!((stats.seen, stats.bad), (44, 4));
    for ((row, reason), bad) in expected.iter().zip(&stats.examples) {
        assert_eq!(bad.row, *row as u64);
        assert!(bad.file.ends_with("bad-00000.parquet"));
        assert_eq!(bad.id, format!("s{row:04}"));
        assert!(bad.reason.contains(reason), "row {row}: {}", bad.reason);
    }
}

#[test]
fn ecgs_the_encoder_cannot_take_are_bad_rows_only_for_an_ecg_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut samples: Vec<Sample> = (0..10).map(|i| sample(i, "a")).collect();
    let ecg = |leads: u32, samples: u32| Signal {
        leads,
        samples,
        sampling_rate_hz: 250.0,
        values: vec![0.5; (leads * samples) as usize],
    };
    samples[2].ecg = Some(ecg(12, 2500));
    samples[4].ecg = Some(ecg(2, 2500)); // two leads
    samples[6].ecg = Some(ecg(8, 1000)); // 4 s
    let mut w = ShardWriter::new(dir.path(), "ecg").unwrap();
    for s in samples {
        w.write(s).unwrap();
    }
    w.finish().unwrap();
    let any = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 0.5, ..cfg() }).unwrap();
    assert_eq!(any.map(Result::unwrap).count(), 10, "without an ECG encoder every ECG shape is kept");
    let mut loader =
        Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 0.5, ecg_encoder: true, ..cfg() }).unwrap();
    assert_eq!(loader.by_ref().map(Result::unwrap).count(), 8);
    let stats = loader.bad_rows();
    assert_eq!(stats.bad, 2);
    assert_eq!(stats.examples[0].row, 4);
    assert!(stats.examples[0].reason.contains("2 leads"), "{}", stats.examples[0].reason);
    assert!(stats.examples[1].reason.contains("4.00 s long"), "{}", stats.examples[1].reason);
}

#[test]
fn too_many_bad_rows_abort_with_the_first_one_named() {
    let dir = tempfile::tempdir().unwrap();
    write_with_bad_rows(dir.path());
    let results: Vec<_> = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 0.05, ..cfg() }).unwrap().collect();
    let err = results.into_iter().find_map(Result::err).expect("4/44 > 5% must abort");
    let msg = err.to_string();
    assert!(matches!(err, DataError::TooManyBadRows { bad: 4, seen: 44, .. }), "{msg}");
    assert!(msg.contains("bad-00000.parquet row 3"), "{msg}");
}

#[test]
fn synthetic_set_streams_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let files = synthetic::write_synthetic(dir.path(), 70, 4, |_| {}).unwrap();
    assert_eq!(files.len(), 1);
    let got: Vec<Sample> = Loader::open(dir.path(), LoaderConfig { checks: qoq_data::Checks::FullDecode, ..cfg() })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), 70);
    assert_eq!(got[5], synthetic::generate(4, 5));
}

#[test]
fn corrupting_any_byte_range_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 21);
    let victim = dir.path().join("t-00000.parquet");
    let original = std::fs::read(&victim).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..60 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % original.len() as u64) as usize;
        let len = 1 + (state >> 40) as usize % 64;
        let mut bytes = original.clone();
        for b in &mut bytes[at..(at + len).min(original.len())] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(&victim, &bytes).unwrap();
        // Ok or Err are both fine; a panic fails the test.
        if let Ok(loader) = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 1.0, ..cfg() }) {
            for item in loader {
                if let Err(e) = item {
                    assert!(e.to_string().contains(".parquet"), "{e}");
                }
            }
        }
    }
}

#[test]
fn split_filter_keeps_only_the_named_splits() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_synthetic(dir.path(), 60, 2, |_| {}).unwrap();
    let c = LoaderConfig { shuffle: true, splits: Some(vec!["val".into()]), ..cfg() };
    let got: Vec<Sample> = Loader::open(dir.path(), c).unwrap().map(Result::unwrap).collect();
    assert_eq!(got.len(), 6, "every 10th synthetic row is val");
    assert!(got.iter().all(|s| s.split == "val"));
}

#[test]
fn a_cursor_saved_under_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 30);
    let mut a = Loader::open(dir.path(), LoaderConfig { shuffle: true, seed: 1, ..cfg() }).unwrap();
    a.next().unwrap().unwrap();
    let saved = a.cursor();
    let mut b = Loader::open(dir.path(), LoaderConfig { shuffle: true, seed: 2, ..cfg() }).unwrap();
    let err = b.seek(saved).unwrap_err();
    assert!(err.to_string().contains("other shards, seed"), "{err}");
    let mut c =
        Loader::open(dir.path(), LoaderConfig { shuffle: true, seed: 1, rank: 0, world_size: 2, ..cfg() }).unwrap();
    assert!(c.seek(saved).is_err(), "another world size is other settings too");
}

#[test]
fn after_an_error_seek_lets_the_caller_retry() {
    let dir = tempfile::tempdir().unwrap();
    write_with_bad_rows(dir.path());
    let mut l = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 0.05, ..cfg() }).unwrap();
    let start = l.cursor();
    let results: Vec<_> = l.by_ref().collect();
    assert!(results.last().unwrap().is_err(), "the error comes last");
    assert!(l.next().is_none(), "nothing after the error");
    l.seek(start).unwrap();
    assert!(l.next().unwrap().is_ok(), "seek resets the failed state");
}

#[test]
fn an_epoch_of_only_bad_rows_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::new(dir.path(), "allbad").unwrap();
    for i in 0..5 {
        let mut s = sample(i, "a");
        s.answer.clear();
        w.write(s).unwrap();
    }
    w.finish().unwrap();
    let l = Loader::open(dir.path(), LoaderConfig { max_bad_fraction: 1.0, epochs: None, ..cfg() }).unwrap();
    let results: Vec<_> = l.take(100).collect();
    assert_eq!(results.len(), 1);
    assert!(results[0].as_ref().unwrap_err().to_string().contains("no usable row"));
}

#[test]
fn narrow_projections_still_pass_the_row_checks() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 10);
    let c = LoaderConfig { columns: vec!["boxes".into()], ..cfg() };
    let got: Vec<Sample> = Loader::open(dir.path(), c).unwrap().map(Result::unwrap).collect();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|s| s.boxes.len() == 1 && s.images.len() == 1 && s.modality == "image"));
}
