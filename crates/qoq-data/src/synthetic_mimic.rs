//! A deterministic synthetic MIMIC-IV-style question-answer set (`make-synthetic --kind
//! mimic`): EHR fields rendered into the prompt, open-ended answers. The rows look like
//! what `convert-data --format mimic` writes: domain and modality `ehr`, dataset
//! `qa_type_1`, no images, no choices, ids `<file stem>/<line>` (here `syn_qa_<split>/<n>`,
//! `n` counting from 1 within the split), and the leftover keys (`insurance_type`) in `extra`.
//!
//! Each patient has an age, a sex, seven vitals, six to nine labs, home medications and a
//! past medical history. The answer is a comma-separated list of 1-3 diagnoses from the
//! 20 of [`FINDINGS`], in that table's order, and follows from the fields by one rule: a
//! diagnosis is in the answer exactly when its field is shown and abnormal (outside its
//! normal range, or the abnormal word of a categorical field). Abnormal numbers carry the
//! lab flag `(H)` / `(L)` as MIMIC's `flag` column does, so a tiny policy can learn the
//! rule from text. Medications are weak correlates only: a diagnosis's typical drug is
//! listed for half of the patients with it and for 10% of those without (a controlled
//! condition), and past history and filler drugs carry no signal.
//!
//! Splits follow the index: `i % 10` in 0..8 is train, 8 val, 9 test. Sample `i` depends
//! only on (seed, i).

use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::rng;
use crate::sample::Sample;
use crate::synthetic::{write_generated, ShardLayout};

/// Rows `make-synthetic --kind mimic` writes by default (200 of them test).
pub const DEFAULT_SAMPLES: usize = 2000;
/// Shard file prefix (`mimic-NNNNN.parquet`).
pub const PREFIX: &str = "mimic";
/// The converter's domain for MIMIC-IV rows.
pub const DOMAIN: &str = "ehr";
/// The dataset (the MIMIC QA type; types 1 and 2 are the open-ended ones).
pub const DATASET: &str = "qa_type_1";
/// The question after the record.
pub const QUESTION: &str = "Which diagnoses apply to this admission? Answer with a comma-separated list of diagnoses.";

/// How a field's values are drawn and when they are abnormal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Normal in `normal`, abnormal (flag `H`) in `high`.
    High { normal: (f64, f64), high: (f64, f64) },
    /// Normal in `normal`, abnormal (flag `L`) in `low`.
    Low { normal: (f64, f64), low: (f64, f64) },
    /// A categorical field: the normal word or the abnormal one.
    Word { normal: &'static str, abnormal: &'static str },
}

/// One diagnosis and the field that drives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub diagnosis: &'static str,
    /// Field name as rendered (and the key in `extra.ehr.vitals` / `extra.ehr.labs`).
    pub field: &'static str,
    /// Vital sign (always shown) or lab (shown when abnormal, else sometimes).
    pub vital: bool,
    pub unit: &'static str,
    pub decimals: usize,
    pub range: Range,
    /// A home medication typical of the diagnosis.
    pub drug: Option<&'static str>,
}

impl Finding {
    /// Whether `value` (a number, or a word for [`Range::Word`]) is abnormal.
    pub fn is_abnormal(&self, value: &Value) -> bool {
        match self.range {
            Range::High { normal, .. } => value.as_f64().is_some_and(|v| v > normal.1),
            Range::Low { normal, .. } => value.as_f64().is_some_and(|v| v < normal.0),
            Range::Word { abnormal, .. } => value.as_str() == Some(abnormal),
        }
    }
}

const fn high(lo: f64, hi: f64, alo: f64, ahi: f64) -> Range {
    Range::High { normal: (lo, hi), high: (alo, ahi) }
}

const fn low(lo: f64, hi: f64, alo: f64, ahi: f64) -> Range {
    Range::Low { normal: (lo, hi), low: (alo, ahi) }
}

const fn finding(
    diagnosis: &'static str,
    field: &'static str,
    vital: bool,
    unit: &'static str,
    decimals: usize,
    range: Range,
    drug: Option<&'static str>,
) -> Finding {
    Finding { diagnosis, field, vital, unit, decimals, range, drug }
}

/// The 20 diagnoses, each driven by its own field, in answer order.
pub const FINDINGS: [Finding; 20] = [
    finding("pneumonia", "temperature", true, "C", 1, high(36.2, 37.4, 38.4, 40.2), None),
    finding(
        "atrial fibrillation",
        "heart rhythm",
        true,
        "",
        0,
        Range::Word { normal: "regular", abnormal: "irregularly irregular" },
        Some("apixaban"),
    ),
    finding(
        "hypertension",
        "systolic blood pressure",
        true,
        "mmHg",
        0,
        high(100.0, 135.0, 165.0, 210.0),
        Some("amlodipine"),
    ),
    finding("acute respiratory failure", "SpO2", true, "%", 0, low(95.0, 100.0, 78.0, 88.0), None),
    finding("obesity", "BMI", true, "kg/m2", 1, high(19.0, 29.5, 35.0, 48.0), None),
    finding(
        "type 2 diabetes mellitus",
        "glucose",
        false,
        "mg/dL",
        0,
        high(70.0, 130.0, 220.0, 450.0),
        Some("metformin"),
    ),
    finding("chronic kidney disease", "creatinine", false, "mg/dL", 1, high(0.6, 1.2, 2.2, 6.0), Some("sevelamer")),
    finding("sepsis", "lactate", false, "mmol/L", 1, high(0.5, 1.8, 3.0, 8.0), None),
    finding("anemia", "hemoglobin", false, "g/dL", 1, low(12.0, 16.5, 6.0, 9.5), Some("ferrous sulfate")),
    finding("hyperkalemia", "potassium", false, "mEq/L", 1, high(3.5, 5.0, 5.8, 7.2), None),
    finding("hyponatremia", "sodium", false, "mEq/L", 0, low(136.0, 145.0, 118.0, 129.0), None),
    finding("congestive heart failure", "BNP", false, "pg/mL", 0, high(10.0, 90.0, 600.0, 3500.0), Some("furosemide")),
    finding("hypothyroidism", "TSH", false, "mIU/L", 1, high(0.5, 4.5, 9.0, 40.0), Some("levothyroxine")),
    finding("acute hepatitis", "ALT", false, "U/L", 0, high(8.0, 40.0, 180.0, 1200.0), None),
    finding("thrombocytopenia", "platelets", false, "K/uL", 0, low(150.0, 400.0, 20.0, 95.0), None),
    finding("hyperlipidemia", "LDL", false, "mg/dL", 0, high(60.0, 129.0, 190.0, 280.0), Some("atorvastatin")),
    finding("acute myocardial infarction", "troponin T", false, "ng/mL", 2, high(0.0, 0.01, 0.2, 8.0), Some("aspirin")),
    finding(
        "urinary tract infection",
        "urine nitrite",
        false,
        "",
        0,
        Range::Word { normal: "negative", abnormal: "positive" },
        None,
    ),
    finding("coagulopathy", "INR", false, "", 1, high(0.9, 1.2, 2.5, 6.0), None),
    finding("gout", "uric acid", false, "mg/dL", 1, high(3.0, 7.0, 9.5, 14.0), Some("allopurinol")),
];

/// Vitals shown on every record that drive no diagnosis.
const BACKGROUND_VITALS: [(&str, &str, f64, f64); 2] =
    [("heart rate", "bpm", 58.0, 104.0), ("respiratory rate", "/min", 12.0, 22.0)];
/// Drugs that say nothing about the diagnoses.
const FILLER_DRUGS: [&str; 6] = ["acetaminophen", "omeprazole", "docusate", "senna", "melatonin", "cetirizine"];
/// Past history that is not in the answer vocabulary.
const HISTORY: [&str; 8] = [
    "osteoarthritis",
    "cataract surgery",
    "appendectomy",
    "gastroesophageal reflux",
    "depression",
    "migraine",
    "hearing loss",
    "benign prostatic hyperplasia",
];
const INSURANCE: [&str; 2] = ["Medicaid", "Other"];

/// Split of sample `index`.
pub fn split_of(index: usize) -> &'static str {
    match index % 10 {
        8 => "val",
        9 => "test",
        _ => "train",
    }
}

/// 1-based position of sample `index` among the samples of its split.
fn line_in_split(index: usize) -> usize {
    match index % 10 {
        8 | 9 => index / 10 + 1,
        r => index / 10 * 8 + r + 1,
    }
}

/// Writes `samples` rows into `dir` as `mimic-NNNNN.parquet` shards.
pub fn write_mimic(
    dir: &std::path::Path,
    samples: usize,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<std::path::PathBuf>> {
    let layout = ShardLayout { prefix: PREFIX, rows_per_file: 2048, rows_per_row_group: 64, chunk: 512 };
    write_generated(dir, &layout, samples, |i| generate(seed, i), &mut progress)
}

fn uniform(r: &mut ChaCha8Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng::unit(r)
}

/// A number rounded to `decimals` as JSON, and its text.
fn number(v: f64, decimals: usize) -> (Value, String) {
    let text = format!("{v:.decimals$}");
    (json!(text.parse::<f64>().expect("a formatted float parses")), text)
}

/// Value and rendering of `f` (abnormal or not), e.g. `glucose 312 mg/dL (H)`.
fn draw(r: &mut ChaCha8Rng, f: &Finding, abnormal: bool) -> (Value, String) {
    let (value, text, flag) = match f.range {
        Range::Word { normal, abnormal: bad } => {
            let w = if abnormal { bad } else { normal };
            (json!(w), w.to_string(), "")
        }
        Range::High { normal, high } => {
            let (v, t) = number(uniform(r, if abnormal { high } else { normal }), f.decimals);
            (v, t, if abnormal { " (H)" } else { "" })
        }
        Range::Low { normal, low } => {
            let (v, t) = number(uniform(r, if abnormal { low } else { normal }), f.decimals);
            (v, t, if abnormal { " (L)" } else { "" })
        }
    };
    let unit = match f.unit {
        "" => String::new(),
        "%" => "%".into(),
        u => format!(" {u}"),
    };
    (value, format!("{} {text}{unit}{flag}", f.field))
}

/// Sample `index` of the set with `seed`.
pub fn generate(seed: u64, index: usize) -> Sample {
    let mut r = rng::stream(seed, &[0x313C_u64, index as u64]);
    let count = 1 + rng::below(&mut r, 3) as usize;
    let mut order: Vec<usize> = (0..FINDINGS.len()).collect();
    rng::shuffle(&mut r, &mut order);
    let mut present = [false; FINDINGS.len()];
    for &i in &order[..count] {
        present[i] = true;
    }
    let age = 18 + rng::below(&mut r, 73);
    let sex = if rng::unit(&mut r) < 0.5 { "F" } else { "M" };

    let (mut vitals, mut labs) = (Map::new(), Map::new());
    let (mut vital_text, mut lab_text) = (Vec::new(), Vec::new());
    for (i, f) in FINDINGS.iter().enumerate().filter(|(_, f)| f.vital) {
        let (value, text) = draw(&mut r, f, present[i]);
        vitals.insert(f.field.into(), value);
        vital_text.push(text);
        if i == 0 {
            // Background vitals after the temperature.
            for (name, unit, lo, hi) in BACKGROUND_VITALS {
                let v = uniform(&mut r, (lo, hi)).round();
                vitals.insert(name.into(), json!(v));
                vital_text.push(format!("{name} {v} {unit}"));
            }
        }
    }
    // Labs: every abnormal one, and each normal one with probability 0.3 (6-9 in all on
    // average), in table order.
    for (i, f) in FINDINGS.iter().enumerate().filter(|(_, f)| !f.vital) {
        let shown = present[i] || rng::unit(&mut r) < 0.3;
        if shown {
            let (value, text) = draw(&mut r, f, present[i]);
            labs.insert(f.field.into(), value);
            lab_text.push(text);
        }
    }
    let mut drugs = Vec::new();
    for (i, f) in FINDINGS.iter().enumerate() {
        if let Some(drug) = f.drug {
            if rng::unit(&mut r) < if present[i] { 0.5 } else { 0.1 } {
                drugs.push(drug);
            }
        }
    }
    for _ in 0..rng::below(&mut r, 3) {
        let d = FILLER_DRUGS[rng::below(&mut r, FILLER_DRUGS.len() as u64) as usize];
        if !drugs.contains(&d) {
            drugs.push(d);
        }
    }
    let mut history = Vec::new();
    for _ in 0..rng::below(&mut r, 3) {
        let h = HISTORY[rng::below(&mut r, HISTORY.len() as u64) as usize];
        let fits = sex == "M" || h != "benign prostatic hyperplasia";
        if fits && !history.contains(&h) {
            history.push(h);
        }
    }
    let insurance = if age >= 65 { "Medicare" } else { INSURANCE[rng::below(&mut r, 2) as usize] };
    let list = |items: &[&str]| if items.is_empty() { "none".to_string() } else { items.join(", ") };
    let article = if age == 18 || (80..90).contains(&age) { "an" } else { "a" };
    let problem = format!(
        "Patient is {article} {age}-year-old {sex} admitted to the hospital. Vitals: {}. Labs: {}. Home medications: {}. \
         Past medical history: {}. {QUESTION}",
        vital_text.join(", "),
        if lab_text.is_empty() { "none".to_string() } else { lab_text.join(", ") },
        list(&drugs),
        list(&history),
    );
    let answer: Vec<&str> = FINDINGS.iter().zip(present).filter(|(_, p)| *p).map(|(f, _)| f.diagnosis).collect();
    let split = split_of(index);
    let extra = json!({
        "insurance_type": insurance,
        "ehr": {
            "age": age,
            "sex": sex,
            "vitals": vitals,
            "labs": labs,
            "medications": drugs,
            "prior_diagnoses": history,
        },
        "synthetic": { "seed": seed, "index": index },
    });
    Sample {
        id: format!("syn_qa_{split}/{}", line_in_split(index)),
        dataset: DATASET.into(),
        domain: DOMAIN.into(),
        modality: "ehr".into(),
        split: split.into(),
        problem,
        answer: answer.join(", "),
        extra: extra.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{check_sample, Checks};

    #[test]
    fn samples_are_deterministic_valid_and_unique() {
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..200 {
            let s = generate(2, i);
            assert_eq!(s, generate(2, i));
            check_sample(&s, Checks::FullDecode).unwrap_or_else(|e| panic!("sample {i}: {e}"));
            assert!((1..=3).contains(&s.answer_labels().len()), "{}", s.answer);
            assert!(s.images.is_empty() && s.choices.is_empty());
            assert!(ids.insert(s.id.clone()), "duplicate id {}", s.id);
        }
        assert_ne!(generate(2, 7).problem, generate(3, 7).problem);
        assert_eq!(generate(0, 0).id, "syn_qa_train/1");
        assert_eq!(generate(0, 18).id, "syn_qa_val/2");
        assert_eq!(generate(0, 19).id, "syn_qa_test/2");
        assert_eq!(generate(0, 17).id, "syn_qa_train/16");
    }

    #[test]
    fn ranges_do_not_overlap_and_fields_are_distinct() {
        let fields: std::collections::BTreeSet<_> = FINDINGS.iter().map(|f| f.field).collect();
        assert_eq!(fields.len(), FINDINGS.len());
        for f in FINDINGS {
            match f.range {
                Range::High { normal, high } => assert!(normal.0 < normal.1 && normal.1 < high.0 && high.0 < high.1),
                Range::Low { normal, low } => assert!(low.0 < low.1 && low.1 < normal.0 && normal.0 < normal.1),
                Range::Word { normal, abnormal } => assert_ne!(normal, abnormal),
            }
        }
    }
}
