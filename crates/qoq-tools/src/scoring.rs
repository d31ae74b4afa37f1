//! The `score` tool's input: JSONL records read in chunks, and their masks loaded once per
//! distinct file. Shared by `score` and the `bench_rewards` example.
//!
//! A record: `id` (string or integer), `response`, `answer` (labels joined by ", "),
//! optional `gt_boxes` ([[x1, y1, x2, y2], ...]), `mask` (a PNG path relative to the input
//! file's folder), `image_size` ([width, height] of the resized image the boxes refer to),
//! `domain` and `dataset` (for `--metrics`). Other keys are ignored.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use qoq_data::convert::fields::{optional_str, required_str, type_name};
use qoq_rewards::{BBox, Mask, Scorer, Scores, Target};
use rayon::prelude::*;
use serde_json::{Map, Value};

/// One input line.
#[derive(Debug, Clone)]
pub struct ScoreRecord {
    /// 1-based line number in the input file.
    pub line: usize,
    pub id: String,
    pub response: String,
    pub answer: String,
    pub gt_boxes: Vec<BBox>,
    pub mask: Option<String>,
    pub image_size: Option<(u32, u32)>,
    pub domain: Option<String>,
    pub dataset: Option<String>,
}

impl ScoreRecord {
    /// Parse one JSON object; the error says which key is wrong and what is expected.
    pub fn parse(text: &str, line: usize) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON ({e})"))?;
        let Value::Object(obj) = value else { bail!("expected a JSON object, found {}", type_name(&value)) };
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => bail!("`id` must be a string, found {}", type_name(other)),
            None => bail!("missing `id`"),
        };
        Ok(Self {
            line,
            id,
            response: required_string(&obj, "response")?,
            answer: required_string(&obj, "answer")?,
            gt_boxes: gt_boxes(&obj)?,
            mask: optional_string(&obj, "mask")?,
            image_size: image_size(&obj)?,
            domain: optional_string(&obj, "domain")?,
            dataset: optional_string(&obj, "dataset")?,
        })
    }
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String> {
    required_str(obj, key).map(str::to_string).map_err(|reason| anyhow!(reason))
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    optional_str(obj, key).map(|s| s.map(str::to_string)).map_err(|reason| anyhow!(reason))
}

fn gt_boxes(obj: &Map<String, Value>) -> Result<Vec<BBox>> {
    let items = match obj.get("gt_boxes") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => bail!("`gt_boxes` must be a list of [x1, y1, x2, y2], found {}", type_name(other)),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, b)| {
            qoq_rewards::grounding::as_bbox(b)
                .ok_or_else(|| anyhow!("`gt_boxes[{i}]` must be [x1, y1, x2, y2] (4 numbers), found {b}"))
        })
        .collect()
}

fn image_size(obj: &Map<String, Value>) -> Result<Option<(u32, u32)>> {
    let v = match obj.get("image_size") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let dims: Option<Vec<u32>> = v
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64().filter(|&d| d > 0 && d <= 1 << 20).map(|d| d as u32)).collect());
    match dims.as_deref() {
        Some(&[w, h]) => Ok(Some((w, h))),
        _ => bail!("`image_size` must be [width, height] (two positive integers), found {v}"),
    }
}

/// Reads an input file a chunk of records at a time; errors name the file and line.
pub struct RecordReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
    buf: String,
}

impl RecordReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            buf: String::new(),
        })
    }

    /// Up to `max` records; an empty vector at the end. Blank lines are skipped.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<ScoreRecord>> {
        let mut out = Vec::new();
        while out.len() < max {
            self.buf.clear();
            self.line += 1;
            let read = self.reader.read_line(&mut self.buf).map_err(|e| {
                anyhow!(
                    "{} line {}: cannot read ({e}); the file must be UTF-8 JSON lines",
                    self.path.display(),
                    self.line
                )
            })?;
            if read == 0 {
                break;
            }
            if self.buf.trim().is_empty() {
                continue;
            }
            let record = ScoreRecord::parse(&self.buf, self.line)
                .map_err(|e| anyhow!("{} line {}: {e:#}", self.path.display(), self.line))?;
            out.push(record);
        }
        Ok(out)
    }

    /// Bytes read so far (for progress).
    pub fn position(&mut self) -> u64 {
        use std::io::Seek;
        self.reader.stream_position().unwrap_or(0)
    }
}

type MaskKey = (String, Option<(u32, u32)>);

/// Decoded masks by (path, image size), relative to the input file's folder. Holds the
/// masks of the current chunk only, so memory stays bounded on long inputs; responses of a
/// group usually sit in one chunk and share one decode.
pub struct MaskCache {
    base: PathBuf,
    masks: HashMap<MaskKey, Arc<Mask>>,
}

impl MaskCache {
    pub fn new(input: &Path) -> Self {
        let base = input.parent().map(Path::to_path_buf).unwrap_or_default();
        Self { base, masks: HashMap::new() }
    }

    /// Make sure every mask `records` name is loaded (in parallel), dropping the others.
    pub fn prepare(&mut self, records: &[ScoreRecord], input: &Path) -> Result<()> {
        let mut wanted: HashMap<MaskKey, usize> = HashMap::new();
        for r in records {
            if let Some(m) = &r.mask {
                wanted.entry((m.clone(), r.image_size)).or_insert(r.line);
            }
        }
        self.masks.retain(|k, _| wanted.contains_key(k));
        let missing: Vec<(MaskKey, usize)> = wanted.into_iter().filter(|(k, _)| !self.masks.contains_key(k)).collect();
        let loaded: Vec<(MaskKey, Arc<Mask>)> = missing
            .into_par_iter()
            .map(|((rel, size), line)| {
                let path = self.base.join(&rel);
                let load = || -> Result<Mask> {
                    let mask = Mask::open(&path)?;
                    Ok(match size {
                        Some((w, h)) if (w, h) != (mask.width(), mask.height()) => mask.resized(w, h)?,
                        _ => mask,
                    })
                };
                let mask = load().with_context(|| {
                    format!("{} line {line}: mask '{rel}' (at {}) cannot be used", input.display(), path.display())
                })?;
                Ok(((rel, size), Arc::new(mask)))
            })
            .collect::<Result<_>>()?;
        self.masks.extend(loaded);
        Ok(())
    }

    pub fn get(&self, record: &ScoreRecord) -> Option<&Mask> {
        let key = (record.mask.clone()?, record.image_size);
        self.masks.get(&key).map(Arc::as_ref)
    }
}

/// Score a chunk in parallel, in input order.
pub fn score_records(scorer: &Scorer, records: &[ScoreRecord], masks: &MaskCache) -> Vec<Scores> {
    let items: Vec<(&str, Target<'_>)> = records
        .iter()
        .map(|r| {
            let target = Target { answer: &r.answer, boxes: &r.gt_boxes, mask: masks.get(r) };
            (r.response.as_str(), target)
        })
        .collect();
    scorer.score_batch(&items)
}

/// One output line: `id`, then `f1`, `iou`, `format`, `length`, `jaccard`, `overall`.
pub fn output_line(id: &str, scores: &Scores) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        id: &'a str,
        #[serde(flatten)]
        scores: &'a Scores,
    }
    serde_json::to_string(&Line { id, scores }).expect("strings and finite floats always serialise")
}
