//! MIMIC-IV question-answer rows (`multimodal/mimiciv/qa_{train,val,test}.jsonl`, written
//! by qoq_med3 `scripts/consolidate_mimic_qa.py`):
//!
//! ```json
//! {"question": "<image> Patient is ... \\boxed{} with a single letter", "problem": "<same>",
//!  "choices": ["A. Sepsis", "B. Acute kidney failure"], "correct_choice": "B", "answer": "B",
//!  "images": ["files/p10/.../x.jpg"], "time-series": [], "data_source": "mimic_qa",
//!  "dataset": "qa_type_3", "insurance_type": "Medicare"}
//! ```
//!
//! The domain is always `ehr`; the dataset is the row's `qa_type_N`. As the consolidation
//! script did, numbers are accepted where strings are expected and turned into text.

use serde_json::Value;

use super::fields::{extra_map, first_present, str_list, strip_placeholders, type_name, Reason, Row};
use super::FileContext;
use crate::sample::Sample;

/// Keys turned into sample fields; the rest (`correct_choice`, `insurance_type`, ...) go
/// into `extra`.
const CONSUMED: [&str; 11] = [
    "question",
    "problem",
    "answer",
    "choices",
    "images",
    "time-series",
    "time_series",
    "dataset",
    "data_source",
    "sampling_rate",
    "id",
];

/// A string, or a number written as text (`3`, `1.5`); `None` for null.
fn text(key: &str, v: &Value) -> Result<Option<String>, Reason> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(format!("`{key}` must be a string, found {}", type_name(other))),
    }
}

/// `row[key]` as trimmed text; `None` when missing, null or blank.
fn field(row: &Row, key: &str) -> Result<Option<String>, Reason> {
    match row.get(key) {
        None => Ok(None),
        Some(v) => Ok(text(key, v)?.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())),
    }
}

pub(super) fn convert_row(row: &Row, id: String, ctx: &FileContext) -> Result<Sample, Reason> {
    let (key, question) =
        first_present(row, &["question", "problem"]).ok_or("missing key `question` (or `problem`)")?;
    let problem = strip_placeholders(&text(key, question)?.unwrap_or_default());
    if problem.is_empty() {
        return Err(format!("empty `{key}`"));
    }
    // Types 3, 5 and 6 answer with `correct_choice`; the consolidated files copy it into
    // `answer`, the per-type files may not.
    let answer = match (field(row, "answer")?, field(row, "correct_choice")?) {
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) if row.contains_key("answer") => return Err("empty `answer`".into()),
        (None, None) => return Err("missing key `answer`".into()),
    };
    let choices = match row.get("choices") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| text(&format!("choices[{i}]"), v).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty()) // `[""]` stands for "no choices"
            .collect(),
        Some(v) => return Err(format!("`choices` must be a list of strings, found {}", type_name(v))),
    };
    let dataset = field(row, "dataset")?.unwrap_or_else(|| "mimic_qa".into());
    let image_paths = str_list(row, "images")?;
    let series_key = if row.contains_key("time-series") { "time-series" } else { "time_series" };
    let series_paths = str_list(row, series_key)?;
    let rate = super::sampling_rate(row)?;
    let images = ctx.read_images(&image_paths)?;
    let (ecg, unused) = ctx.read_time_series(series_key, &series_paths, rate)?;

    let mut extra = extra_map(row, &CONSUMED);
    if !unused.is_empty() {
        extra.insert("unused_time_series".into(), unused.into());
    }
    Ok(Sample {
        id,
        dataset,
        domain: "ehr".into(),
        modality: "ehr".into(),
        split: ctx.split.clone(),
        problem,
        answer,
        choices,
        images,
        ecg,
        extra: Value::Object(extra).to_string(),
        ..Default::default()
    })
}
