//! The three synthetic generators (climb, benchmark, mimic) written to disk and read back
//! through the loader: rows per split and per domain, the 10 : 4 : 2 : 1 ratio, difficulty
//! tiers, determinism per seed, and the MIMIC-style rule from EHR fields to diagnoses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qoq_data::synthetic_benchmark as bench;
use qoq_data::synthetic_mimic::{self as mimic, Range, FINDINGS};
use qoq_data::{synthetic, Loader, LoaderConfig, Sample};
use serde_json::Value;

fn read_all(dir: &Path) -> Vec<Sample> {
    let mut loader = Loader::open(dir, LoaderConfig::default()).unwrap();
    let rows: Vec<Sample> = loader.by_ref().map(Result::unwrap).collect();
    assert_eq!(loader.bad_rows().bad, 0, "{:?}", loader.bad_rows().examples);
    rows
}

fn count<'a>(keys: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for k in keys {
        *m.entry(k.to_string()).or_insert(0) += 1;
    }
    m
}

fn extra(s: &Sample) -> Value {
    serde_json::from_str(&s.extra).unwrap()
}

/// Per-domain counts relative to the largest follow 10 : 4 : 2 : 1 within 10%.
fn assert_skewed(domains: &BTreeMap<String, usize>, order: [&str; 4]) {
    let big = domains[order[0]] as f64;
    for (name, want) in order.iter().zip([10.0, 4.0, 2.0, 1.0]) {
        let got = domains[*name] as f64 / big * 10.0;
        assert!((got - want).abs() <= 0.1 * want, "{name}: {got:.2} of 10, want {want}; {domains:?}");
    }
}

fn bytes_of(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Two runs with the same seed write identical files; another seed writes other rows.
fn assert_deterministic(write: impl Fn(&Path, u64) -> Vec<PathBuf>) {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fa, fb) = (write(a.path(), 7), write(b.path(), 7));
    let names = |fs: &[PathBuf]| fs.iter().map(|f| f.file_name().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb));
    assert!(bytes_of(&fa) == bytes_of(&fb), "same seed, different bytes");
    let fc = write(c.path(), 8);
    assert!(bytes_of(&fa) != bytes_of(&fc), "another seed wrote the same bytes");
    assert_eq!(read_all(a.path()), read_all(b.path()));
}

#[test]
fn climb_kind_keeps_its_layout() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_synthetic(dir.path(), 68, 0, |_| {}).unwrap();
    let rows = read_all(dir.path());
    assert_eq!(rows.len(), 68);
    let domains = count(rows.iter().map(|s| s.domain.as_str()));
    assert_eq!(domains.values().copied().collect::<Vec<_>>(), [40, 8, 4, 16]); // chest, derm, ecg, mammo
    assert_skewed(&domains, ["chest_xray", "mammography", "dermoscopy", "ecg"]);
    let splits = count(rows.iter().map(|s| s.split.as_str()));
    assert_eq!((splits["train"], splits["val"]), (62, 6));
    assert_deterministic(|d, seed| synthetic::write_synthetic(d, 20, seed, |_| {}).unwrap());
}

#[test]
fn benchmark_has_skewed_domains_splits_and_tiers() {
    // 30 cycles of 17: every domain a multiple of 30 occurrences, so every (split, tier)
    // pair of every domain is exact.
    let n = 17 * 30;
    let dir = tempfile::tempdir().unwrap();
    let mut reported = 0;
    bench::write_benchmark(dir.path(), n, 0, |k| reported += k).unwrap();
    assert_eq!(reported, n);
    let rows = read_all(dir.path());
    assert_eq!(rows.len(), n);
    let domains = count(rows.iter().map(|s| s.domain.as_str()));
    assert_eq!(domains.len(), 4);
    assert_skewed(&domains, ["chest_xray", "dermoscopy", "fundus", "ecg"]);
    assert_eq!((domains["chest_xray"], domains["dermoscopy"], domains["fundus"], domains["ecg"]), (300, 120, 60, 30));
    for domain in bench::DOMAINS.iter().map(|d| d.name) {
        let mine: Vec<&Sample> = rows.iter().filter(|s| s.domain == domain).collect();
        let total = mine.len();
        let splits = count(mine.iter().map(|s| s.split.as_str()));
        assert_eq!((splits["train"], splits["val"], splits["test"]), (total * 6 / 10, total / 10, total * 3 / 10));
        let tiers = count(mine.iter().map(|s| s.id.rsplit('-').next().unwrap()));
        for tier in bench::DIFFICULTIES {
            assert_eq!(tiers[tier], total / 3, "{domain} {tier}: {tiers:?}");
        }
        for split in ["train", "val", "test"] {
            let tiers: Vec<String> = mine
                .iter()
                .filter(|s| s.split == split)
                .map(|s| extra(s)["difficulty"].as_str().unwrap().to_owned())
                .collect();
            let per_tier = count(tiers.iter().map(String::as_str));
            assert_eq!(per_tier.len(), 3, "{domain} {split}: {per_tier:?}");
            assert!(per_tier.values().all(|&c| c * 3 == tiers.len()), "{domain} {split}: {per_tier:?}");
        }
        // 1-2 datasets per domain, each with 2-4 labels, every label used.
        let datasets = count(mine.iter().map(|s| s.dataset.as_str()));
        assert!((1..=2).contains(&datasets.len()), "{datasets:?}");
        for ds in datasets.keys() {
            let labels = count(mine.iter().filter(|s| &s.dataset == ds).map(|s| s.answer.as_str()));
            assert!((2..=4).contains(&labels.len()), "{ds}: {labels:?}");
        }
    }
    for s in &rows {
        let e = extra(s);
        assert_eq!(e["difficulty"].as_str().unwrap(), s.id.rsplit('-').next().unwrap());
        assert_eq!(s.answer_labels(), [s.answer.as_str()]);
        assert!(s.choices.contains(&s.answer));
        assert!(s.problem.contains("Findings: ") && s.problem.ends_with(&s.choices.join("\n")));
        assert_eq!(s.images.len(), 1);
        let (w, h) = qoq_data::image_size(&s.images[0], true).unwrap();
        assert_eq!((w, h), (bench::IMAGE_SIZE, bench::IMAGE_SIZE));
        assert!(s.boxes.is_empty() && s.mask.is_none() && s.ecg.is_none());
    }
    // The cue rates of the tiers, over the whole set (easy 1, medium 0.75, hard 0.5).
    for (tier, p) in [("easy", 1.0), ("medium", bench::MEDIUM_CUE_P), ("hard", bench::HARD_CUE_P)] {
        let of_tier: Vec<Value> = rows.iter().map(extra).filter(|e| e["difficulty"] == tier).collect();
        let cued = of_tier.iter().filter(|e| e["cue"] == "label").count() as f64 / of_tier.len() as f64;
        assert!((cued - p).abs() < 0.08, "{tier}: cue rate {cued:.3}, want {p}");
    }
    let ids = count(rows.iter().map(|s| s.id.as_str()));
    assert_eq!(ids.len(), n, "ids are unique");
}

#[test]
fn benchmark_default_size_gives_100_test_samples_in_the_smallest_domain() {
    let mut test = [0usize; 4];
    for i in 0..bench::DEFAULT_SAMPLES {
        let (d, k) = bench::slot(i);
        if bench::split_of(k) == "test" {
            test[d] += 1;
        }
    }
    assert!(test.iter().all(|&t| t >= 100), "{test:?}");
    // And it is quick to write: a sample costs well under a millisecond.
    let t = std::time::Instant::now();
    for i in 0..200 {
        std::hint::black_box(bench::generate(0, i));
    }
    assert!(t.elapsed().as_secs_f64() < 2.0, "{:?} for 200 samples", t.elapsed());
}

#[test]
fn benchmark_is_deterministic() {
    assert_deterministic(|d, seed| bench::write_benchmark(d, 120, seed, |_| {}).unwrap());
}

/// The text of `field`'s entry in the prompt (`glucose 312 mg/dL (H)`), if shown.
fn rendered<'a>(problem: &'a str, field: &str) -> Option<&'a str> {
    let rest = &problem[problem.find(&format!(" {field} "))? + 1..];
    let end = [", ", ". "].iter().filter_map(|sep| rest.find(sep)).min().unwrap_or(rest.len());
    Some(&rest[..end])
}

#[test]
fn mimic_rows_match_the_converter_and_answers_follow_the_fields() {
    let n = 300;
    let dir = tempfile::tempdir().unwrap();
    mimic::write_mimic(dir.path(), n, 0, |_| {}).unwrap();
    let rows = read_all(dir.path());
    assert_eq!(rows.len(), n);
    let splits = count(rows.iter().map(|s| s.split.as_str()));
    assert_eq!((splits["train"], splits["val"], splits["test"]), (240, 30, 30));
    let mut diagnoses = BTreeMap::new();
    for s in &rows {
        // What `convert-data --format mimic` writes for a row without media.
        assert_eq!((s.domain.as_str(), s.modality.as_str(), s.dataset.as_str()), ("ehr", "ehr", "qa_type_1"));
        assert!(s.images.is_empty() && s.videos.is_empty() && s.ecg.is_none() && s.choices.is_empty());
        assert!(s.boxes.is_empty() && s.mask.is_none());
        assert!(s.id.starts_with(&format!("syn_qa_{}/", s.split)), "{}", s.id);
        let e = extra(s);
        assert!(e["insurance_type"].is_string());
        let ehr = &e["ehr"];
        let age = ehr["age"].as_u64().unwrap();
        let article = if age == 18 || (80..90).contains(&age) { "an" } else { "a" };
        assert!(s
            .problem
            .starts_with(&format!("Patient is {article} {age}-year-old {} admitted", ehr["sex"].as_str().unwrap())));
        let answer = s.answer_labels();
        assert!((1..=3).contains(&answer.len()), "{}", s.answer);
        let order: Vec<usize> = answer
            .iter()
            .map(|a| FINDINGS.iter().position(|f| f.diagnosis == *a).expect("in the vocabulary"))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "answers in vocabulary order: {}", s.answer);
        for f in FINDINGS {
            let value = ehr["vitals"].get(f.field).or_else(|| ehr["labs"].get(f.field));
            let abnormal = match (value, f.range) {
                (None, _) => false,
                (Some(v), Range::High { normal, .. }) => v.as_f64().unwrap() > normal.1,
                (Some(v), Range::Low { normal, .. }) => v.as_f64().unwrap() < normal.0,
                (Some(v), Range::Word { abnormal, .. }) => v.as_str().unwrap() == abnormal,
            };
            assert_eq!(answer.contains(&f.diagnosis), abnormal, "{}: {} for {value:?}", s.id, f.diagnosis);
            // The prompt shows the field when extra has it, flagged when abnormal.
            match rendered(&s.problem, f.field) {
                None => assert!(value.is_none(), "{}: {} not rendered in {}", s.id, f.field, s.problem),
                Some(text) => {
                    assert!(value.is_some(), "{}: {text} rendered but not recorded", s.id);
                    let flagged = text.ends_with("(H)") || text.ends_with("(L)");
                    if !matches!(f.range, Range::Word { .. }) {
                        assert_eq!(flagged, abnormal, "{}: {text}", s.id);
                    }
                }
            }
        }
        for a in answer {
            *diagnoses.entry(a.to_string()).or_insert(0) += 1;
        }
    }
    assert!(diagnoses.len() >= 18, "most of the vocabulary is used: {diagnoses:?}");
    let test = (0..mimic::DEFAULT_SAMPLES).filter(|&i| mimic::split_of(i) == "test").count();
    assert!(test >= 100, "a test split of at least 100 by default, got {test}");
}

#[test]
fn mimic_is_deterministic() {
    assert_deterministic(|d, seed| mimic::write_mimic(d, 150, seed, |_| {}).unwrap());
}
