//! CLIMB per-dataset `annotation_<split>.jsonl` rows (LLaVA style):
//!
//! ```json
//! {"images": ["train/jpegs/x.jpg"], "explanation": "", "age": ["036Y"],
//!  "conversations": [{"from": "human", "value": "<image>\nAbove is ... following:\nA\nB"},
//!                    {"from": "gpt", "value": "B"}]}
//! ```
//!
//! Media paths are relative to the dataset folder; `videos` (or `video`, singular, in
//! Cholec80) replace `images` for video datasets. The file's domain and dataset come from
//! its folder (`<domain folder>/<dataset>/annotation_<split>.jsonl`), not from the row.

use serde_json::Value;

use super::fields::{extra_map, parse_choices, str_list, strip_placeholders, type_name, Reason, Row};
use super::FileContext;
use crate::sample::Sample;

/// Keys turned into sample fields; the rest go into `extra`.
const CONSUMED: [&str; 5] = ["images", "videos", "video", "conversations", "id"];

pub(super) fn convert_row(row: &Row, id: String, ctx: &FileContext) -> Result<Sample, Reason> {
    let (question, answer) = conversation(row)?;
    let answer = answer.trim();
    if answer.is_empty() {
        return Err("empty answer (the `gpt` turn of `conversations`)".into());
    }
    let problem = strip_placeholders(question);
    if problem.is_empty() {
        return Err("empty question (the `human` turn of `conversations`)".into());
    }
    let image_paths = str_list(row, "images")?;
    let mut video_paths = str_list(row, "videos")?;
    match row.get("video") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => video_paths.push(s.clone()),
        Some(Value::Array(_)) => video_paths.extend(str_list(row, "video")?),
        Some(v) => return Err(format!("`video` must be a string or a list of strings, found {}", type_name(v))),
    }
    let images = ctx.read_images(&image_paths)?;
    let videos = ctx.read_videos(&video_paths)?;

    let mut extra = extra_map(row, &CONSUMED);
    // CLIMB writes `"explanation": ""` into every row: no information.
    if extra.get("explanation").and_then(Value::as_str) == Some("") {
        extra.remove("explanation");
    }

    let mut sample = Sample {
        id,
        dataset: ctx.dataset.clone(),
        domain: ctx.domain.clone(),
        split: ctx.split.clone(),
        choices: parse_choices(&problem),
        problem,
        answer: answer.to_string(),
        images,
        videos,
        extra: Value::Object(extra).to_string(),
        ..Default::default()
    };
    sample.modality = crate::schema::infer_modality(&sample).into();
    Ok(sample)
}

/// The first `human` and the first `gpt` value of `conversations`.
fn conversation(row: &Row) -> Result<(&str, &str), Reason> {
    let turns = match row.get("conversations") {
        None | Some(Value::Null) => return Err("missing key `conversations`".into()),
        Some(Value::Array(turns)) => turns,
        Some(v) => return Err(format!("`conversations` must be a list of turns, found {}", type_name(v))),
    };
    let mut human = None;
    let mut gpt = None;
    for (i, turn) in turns.iter().enumerate() {
        let Value::Object(turn) = turn else {
            return Err(format!("`conversations[{i}]` must be an object, found {}", type_name(turn)));
        };
        let from = turn.get("from").and_then(Value::as_str).unwrap_or_default();
        let slot = match from {
            "human" | "user" => &mut human,
            "gpt" | "assistant" => &mut gpt,
            _ => continue,
        };
        if slot.is_none() {
            match turn.get("value") {
                Some(Value::String(v)) => *slot = Some(v.as_str()),
                Some(v) => return Err(format!("`conversations[{i}].value` must be a string, found {}", type_name(v))),
                None => return Err(format!("`conversations[{i}]` has no `value`")),
            }
        }
    }
    match (human, gpt) {
        (Some(h), Some(g)) => Ok((h, g)),
        (None, _) => Err("`conversations` has no `human` turn (the question)".into()),
        (_, None) => Err("`conversations` has no `gpt` turn (the answer)".into()),
    }
}
