//! Converters from the original JSONL files to parquet shards of [`Sample`]s.
//!
//! Three source formats ([`SourceFormat`]):
//!
//! - **Climb**: CLIMB's per-dataset `<root>/<domain folder>/<dataset>/annotation_<split>.jsonl`,
//!   LLaVA style: `images` / `videos` (or `video`) paths relative to the dataset folder and
//!   `conversations` = `[{from: human, value: "<image>\nquestion"}, {from: gpt, value: answer}]`.
//!   Other keys (`age`, `sex`, `label`, ...) are kept in `extra`.
//! - **QoqMed**: the QoQ-Med RL files (`geom_train.jsonl`, ...): `problem`, `answer`,
//!   `images`, `videos`, `time-series` paths relative to the data root, optional `bbox`,
//!   `segmentation_path`, `demo`.
//! - **Mimic**: the MIMIC-IV QA files (`qa_train.jsonl`, ...): `question` / `problem`,
//!   `answer`, `choices`, `correct_choice`, `images`, `time-series`, `dataset` = `qa_type_N`.
//!
//! **Domain and dataset.** CLIMB lays media out as `<domain folder>/<dataset>/...` and the
//! bare dataset name is not unique (`chest_xray/vindr`, `mammo/vindr`), so the pair is
//! what identifies a dataset. Climb files take it from their own folder (the annotation
//! file's grandparent folder, mapped with [`crate::domain::domain_of_folder`], and its
//! parent folder); QoqMed rows from the first image (else video) path, with the original
//! loader's special cases (the MIMIC length-of-stay / 48 h mortality prompts -> `ehr`,
//! time-series-only rows -> `ecg` with the row's `dataset`); Mimic rows are `ehr`.
//!
//! **Media** are embedded: images as their PNG / JPEG bytes; a video is a directory of
//! frames, `frames_per_video` of them sampled uniformly (for a listed `X.mp4` /
//! `X.nii.gz` the frame directory `X/` is read when present; the file itself cannot be
//! decoded here and is a bad row saying how to extract it, e.g. with ffmpeg); time series
//! from `.npy`, `.csv`, `torch.save` `.pt` / `.pth` files (one tensor) or WFDB records
//! (`X.hea` / `X.dat` / `X`, formats 16 and 212; for a listed `X.mat`, the `X.npy` next to
//! it), at the row's `sampling_rate` or 250 Hz -- a WFDB header's sampling frequency
//! overrides both (see docs/ecg-input.md); masks as PNG.
//!
//! **Bad rows** (not JSON, a missing or mistyped key, a missing or unreadable media file,
//! an empty answer, a box outside its image, ...) are skipped and reported as
//! [`BadRow`]s with their line number. If more than `max_bad_fraction` of the lines are
//! bad, the conversion fails and leaves no shards: they are written into a hidden staging
//! folder inside `out_dir` and moved into `out_dir` only on success.
//!
//! ```no_run
//! use qoq_data::convert::{convert_jsonl, ConvertOptions, SourceFormat};
//! let opts = ConvertOptions { format: SourceFormat::Climb, ..Default::default() };
//! let report = convert_jsonl("climb/mammo/vindr/annotation_train.jsonl".as_ref(), "data/train".as_ref(), &opts)?;
//! println!("{} rows, {} bad", report.rows_written, report.bad_count);
//! # Ok::<(), qoq_data::DataError>(())
//! ```

mod climb;
pub mod fields;
mod media;
mod mimic;
mod qoq_med;
mod wfdb;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;
use serde_json::Value;

use crate::domain::{domain_of_folder, DOMAIN_FOLDERS};
use crate::error::{DataError, Result};
use crate::sample::{Sample, Signal};
use crate::shards::ShardWriter;
use crate::validate::{check_sample, BadRow, Checks};

use fields::{normalize_split, split_from_stem, type_name, Reason, Row};

/// Which JSONL layout the input file has (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// CLIMB per-dataset `annotation_<split>.jsonl` (LLaVA `conversations`).
    Climb,
    /// QoQ-Med RL file (`problem` / `answer` / `images` / `videos` / `time-series`).
    QoqMed,
    /// MIMIC-IV QA file (`question` / `answer` / `choices` / `dataset` = `qa_type_N`).
    Mimic,
}

impl SourceFormat {
    /// The names [`FromStr`] accepts, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["climb", "qoq-med", "mimic"];

    /// The name [`FromStr`] accepts for this format.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Climb => "climb",
            SourceFormat::QoqMed => "qoq-med",
            SourceFormat::Mimic => "mimic",
        }
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SourceFormat {
    type Err = DataError;

    /// `climb`, `qoq-med` (also `qoq_med`, `qoqmed`) or `mimic`, case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "climb" => Ok(SourceFormat::Climb),
            "qoq-med" | "qoqmed" => Ok(SourceFormat::QoqMed),
            "mimic" => Ok(SourceFormat::Mimic),
            _ => Err(DataError::Config(format!(
                "unknown source format `{s}`; choose one of: {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// How to convert one JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOptions {
    pub format: SourceFormat,
    /// Folder that relative media paths are resolved against. Climb: the dataset folder
    /// holding the annotation file, by default the annotation file's folder;
    /// QoqMed/Mimic: the data root, by default the JSONL's folder.
    pub media_root: Option<PathBuf>,
    /// Climb only: domain folder (e.g. `mammo`, or a canonical domain such as
    /// `mammography`) when it cannot be derived from the path of the annotation file
    /// (which normally is `<root>/<domain folder>/<dataset>/annotation_<split>.jsonl`).
    pub domain: Option<String>,
    /// Climb only: dataset name when it cannot be derived from the path of the annotation
    /// file (its folder name).
    pub dataset: Option<String>,
    /// Split written into every row (`valid` / `validation` are written as `val`); by
    /// default derived from the file name (`annotation_train` -> `train`, `_valid` / `_val`
    /// -> `val`, `_test` -> `test`; `qa_train.jsonl` etc.), else `train`.
    pub split: Option<String>,
    /// Frames kept per video (a directory of frame images), sampled uniformly; all frames
    /// when the directory holds fewer.
    pub frames_per_video: usize,
    /// Fail (and write nothing) when more than this fraction of the non-blank lines are bad.
    pub max_bad_fraction: f64,
}

impl Default for ConvertOptions {
    /// Climb format, everything derived from the input path, 4 frames per video, at most
    /// 1 % bad lines.
    fn default() -> Self {
        Self {
            format: SourceFormat::Climb,
            media_root: None,
            domain: None,
            dataset: None,
            split: None,
            frames_per_video: 4,
            max_bad_fraction: 0.01,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    /// Samples written to the shards.
    pub rows_written: u64,
    /// The first [`ConvertReport::KEPT_BAD_ROWS`] skipped lines; `row` is the 1-based line
    /// number in the JSONL file and `file` the JSONL file.
    pub bad: Vec<BadRow>,
    /// All skipped lines.
    pub bad_count: u64,
    /// Non-blank lines read (rows written + bad lines).
    pub lines: u64,
    /// The shards written, `out_dir/<prefix>-NNNNN.parquet`.
    pub files: Vec<PathBuf>,
}

impl ConvertReport {
    /// How many bad rows [`ConvertReport::bad`] keeps.
    pub const KEPT_BAD_ROWS: usize = 1000;
}

/// Lines converted in parallel at a time (media reads dominate).
const CHUNK_LINES: usize = 64;

/// Converts the JSONL file `input` into parquet shards in `out_dir`.
///
/// The shards are named `<prefix>-NNNNN.parquet`, the prefix coming from the input file
/// stem (`geom_train`, `qa_val`; Climb files add the domain and dataset, e.g.
/// `mammography-vindr-annotation_train`, because every CLIMB dataset names its files
/// alike). Shards of an earlier conversion with the same prefix are replaced.
///
/// Bad lines are skipped and reported (see [`ConvertReport::bad`]); blank lines are
/// ignored. Fails with [`DataError::Io`] naming `input` when it cannot be read,
/// [`DataError::Invalid`] when a Climb file's domain cannot be derived, and
/// [`DataError::TooManyBadRows`] when more than `max_bad_fraction` of the lines are bad,
/// in which case no shard of this input is left in `out_dir`.
pub fn convert_jsonl(input: &Path, out_dir: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    if opts.frames_per_video == 0 {
        return Err(DataError::Config("frames_per_video must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&opts.max_bad_fraction) {
        return Err(DataError::Config(format!("max_bad_fraction = {} must be within [0, 1]", opts.max_bad_fraction)));
    }
    let file = File::open(input).map_err(|e| DataError::io(input, e))?;
    let ctx = FileContext::new(input, opts)?;
    let staging = Staging::create(out_dir, &ctx.prefix)?;
    let mut writer = ShardWriter::new(&staging.dir, &ctx.prefix)?;
    let mut report = ConvertReport::default();

    let mut reader = BufReader::new(file);
    let mut line_no = 0usize;
    let mut chunk: Vec<(usize, Vec<u8>)> = Vec::with_capacity(CHUNK_LINES);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).map_err(|e| DataError::io(input, e))? == 0 {
            break;
        }
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        chunk.push((line_no, line));
        if chunk.len() == CHUNK_LINES {
            convert_chunk(&ctx, std::mem::take(&mut chunk), &mut writer, &mut report)?;
        }
    }
    convert_chunk(&ctx, chunk, &mut writer, &mut report)?;
    let staged = writer.finish()?;

    if report.lines > 0 {
        let fraction = report.bad_count as f64 / report.lines as f64;
        if fraction > opts.max_bad_fraction {
            // `staging` is dropped here, removing the shards written so far.
            return Err(DataError::TooManyBadRows {
                bad: report.bad_count,
                seen: report.lines,
                percent: 100.0 * fraction,
                max_fraction: opts.max_bad_fraction,
                first: report.bad.first().map(ToString::to_string).unwrap_or_default(),
            });
        }
    }
    report.files = staging.commit(&staged)?;
    Ok(report)
}

/// A converted line: the checked sample, or the row id and why it was skipped.
type LineResult = std::result::Result<Sample, (String, Reason)>;

/// Converts one chunk of lines in parallel and writes the good rows in line order.
fn convert_chunk(
    ctx: &FileContext,
    chunk: Vec<(usize, Vec<u8>)>,
    writer: &mut ShardWriter,
    report: &mut ConvertReport,
) -> Result<()> {
    let results: Vec<(usize, LineResult)> =
        chunk.par_iter().map(|(line, bytes)| (*line, ctx.convert_line(*line, bytes))).collect();
    for (line, result) in results {
        report.lines += 1;
        match result {
            Ok(sample) => {
                writer.write(sample)?;
                report.rows_written += 1;
            }
            Err((id, reason)) => {
                report.bad_count += 1;
                if report.bad.len() < ConvertReport::KEPT_BAD_ROWS {
                    report.bad.push(BadRow { file: ctx.input.clone(), row: line as u64, id, reason });
                }
            }
        }
    }
    Ok(())
}

/// What every row of one input file shares.
struct FileContext {
    format: SourceFormat,
    input: PathBuf,
    /// The input file name without `.jsonl`.
    stem: String,
    /// Shard file prefix.
    prefix: String,
    media_root: PathBuf,
    split: String,
    frames_per_video: usize,
    /// Climb: the canonical domain and the dataset of the whole file.
    domain: String,
    dataset: String,
}

impl FileContext {
    fn new(input: &Path, opts: &ConvertOptions) -> Result<Self> {
        let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.strip_suffix(".jsonl").or_else(|| name.strip_suffix(".json")).unwrap_or(&name).to_string();
        let folder = match input.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let split = match &opts.split {
            Some(s) => normalize_split(s),
            None => split_from_stem(&stem).unwrap_or_else(|| "train".into()),
        };
        let (domain, dataset) = match opts.format {
            SourceFormat::Climb => climb_names(input, &folder, opts)?,
            _ => (String::new(), String::new()),
        };
        let prefix = match opts.format {
            SourceFormat::Climb => format!("{domain}-{dataset}-{stem}"),
            _ => stem.clone(),
        };
        Ok(Self {
            format: opts.format,
            input: input.to_path_buf(),
            prefix: sanitize(&prefix),
            stem,
            media_root: opts.media_root.clone().unwrap_or(folder),
            split,
            frames_per_video: opts.frames_per_video,
            domain,
            dataset,
        })
    }

    /// The id of a row without an `id` key: `<domain>/<dataset>/<split>/<line>` for Climb
    /// (dataset names repeat across domains), `<file stem>/<line>` otherwise.
    fn default_id(&self, line: usize) -> String {
        match self.format {
            SourceFormat::Climb => format!("{}/{}/{}/{line}", self.domain, self.dataset, self.split),
            _ => format!("{}/{line}", self.stem),
        }
    }

    /// One JSONL line -> a checked sample, or (id, reason).
    fn convert_line(&self, line: usize, bytes: &[u8]) -> LineResult {
        let default_id = self.default_id(line);
        let row = parse_row(bytes).map_err(|r| (default_id.clone(), r))?;
        let id = match row.get("id") {
            None | Some(Value::Null) => default_id,
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => return Err((default_id, format!("`id` must be a non-empty string, found {}", type_name(v)))),
        };
        let sample = match self.format {
            SourceFormat::Climb => climb::convert_row(&row, id.clone(), self),
            SourceFormat::QoqMed => qoq_med::convert_row(&row, id.clone(), self),
            SourceFormat::Mimic => mimic::convert_row(&row, id.clone(), self),
        }
        .map_err(|r| (id.clone(), r))?;
        check_sample(&sample, Checks::Headers).map_err(|r| (id, r))?;
        Ok(sample)
    }

    /// The images at `paths`; a failure names `images[i]` and the file.
    fn read_images(&self, paths: &[String]) -> std::result::Result<Vec<Vec<u8>>, Reason> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| media::read_image(&self.media_root, p).map_err(|e| format!("`images[{i}]`: {e}")))
            .collect()
    }

    /// The sampled frames of the videos at `paths`; a failure names `videos[i]` and the file.
    fn read_videos(&self, paths: &[String]) -> std::result::Result<Vec<Vec<Vec<u8>>>, Reason> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                media::read_video(&self.media_root, p, self.frames_per_video).map_err(|e| format!("`videos[{i}]`: {e}"))
            })
            .collect()
    }

    /// The first time series of `paths` (a sample holds one) and the paths not used.
    fn read_time_series(
        &self,
        key: &str,
        paths: &[String],
        sampling_rate_hz: f32,
    ) -> std::result::Result<(Option<Signal>, Vec<String>), Reason> {
        let Some((first, rest)) = paths.split_first() else {
            return Ok((None, Vec::new()));
        };
        let signal = media::read_time_series(&self.media_root, first, sampling_rate_hz)
            .map_err(|e| format!("`{key}[0]`: {e}"))?;
        Ok((Some(signal), rest.to_vec()))
    }
}

/// Parses one line as a JSON object.
fn parse_row(bytes: &[u8]) -> std::result::Result<Row, Reason> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(row)) => Ok(row),
        Ok(other) => Err(format!("expected a JSON object, found {}", type_name(&other))),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// Default ECG sampling rate: CLIMB / ECG-JEPA resample 10 s records to 2500 samples.
const DEFAULT_SAMPLING_RATE_HZ: f32 = 250.0;

/// The row's `sampling_rate` in Hz, else [`DEFAULT_SAMPLING_RATE_HZ`].
fn sampling_rate(row: &Row) -> std::result::Result<f32, Reason> {
    match fields::optional_f64(row, "sampling_rate")? {
        None => Ok(DEFAULT_SAMPLING_RATE_HZ),
        Some(r) if r.is_finite() && r > 0.0 => Ok(r as f32),
        Some(r) => Err(format!("`sampling_rate` = {r} must be a positive number")),
    }
}

/// Climb: (canonical domain, dataset) of the annotation file, from `opts` or its folders.
fn climb_names(input: &Path, folder: &Path, opts: &ConvertOptions) -> Result<(String, String)> {
    // Resolve `.` / relative paths so the folder names are real ones.
    let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    let folder_name = |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    let dataset = match &opts.dataset {
        Some(d) if !d.trim().is_empty() => d.trim().to_string(),
        _ => folder_name(Some(&folder)).ok_or_else(|| {
            DataError::invalid(input, "cannot derive the dataset name from the annotation file's folder; set `dataset`")
        })?,
    };
    let known = || DOMAIN_FOLDERS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ");
    let domain = match &opts.domain {
        Some(d) => domain_of_folder(d.trim()).ok_or_else(|| {
            DataError::Config(format!("domain `{d}` is not a known domain folder (known: {})", known()))
        })?,
        None => {
            let parent = folder_name(folder.parent()).unwrap_or_default();
            domain_of_folder(&parent).ok_or_else(|| {
                DataError::invalid(
                    input,
                    format!(
                        "cannot derive the domain: the folder above the dataset folder is `{parent}`, not a domain \
                         folder (expected <root>/<domain folder>/<dataset>/annotation_<split>.jsonl, domain folders: {}); \
                         set `domain`",
                        known()
                    ),
                )
            })?
        }
    };
    Ok((domain.to_string(), dataset))
}

/// A file-name-safe prefix: characters other than letters, digits, `-`, `_` and `.`
/// become `_`.
fn sanitize(prefix: &str) -> String {
    prefix.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// A hidden folder inside `out_dir` the shards are written to. On success they are moved
/// into `out_dir` ([`Staging::commit`]); dropped without a commit, the folder and its
/// shards are removed (and `out_dir` too when this conversion created it and it is empty).
struct Staging {
    out_dir: PathBuf,
    dir: PathBuf,
    prefix: String,
    created_out_dir: bool,
    committed: bool,
}

impl Staging {
    fn create(out_dir: &Path, prefix: &str) -> Result<Self> {
        let created_out_dir = !out_dir.exists();
        std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
        let dir = out_dir.join(format!(".{prefix}.converting"));
        if dir.exists() {
            // Left over by a killed conversion.
            std::fs::remove_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Self { out_dir: out_dir.to_path_buf(), dir, prefix: prefix.to_string(), created_out_dir, committed: false })
    }

    /// Moves `staged` into `out_dir` (replacing same-named shards), then removes older
    /// shards of this prefix that the new conversion did not write. A crash in between
    /// leaves the new shards plus some stale ones, never a prefix with no shards.
    fn commit(mut self, staged: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let mut files = Vec::with_capacity(staged.len());
        for from in staged {
            let to = self.out_dir.join(from.file_name().unwrap_or_default());
            std::fs::rename(from, &to).map_err(|e| DataError::io(&to, e))?;
            files.push(to);
        }
        let entries = std::fs::read_dir(&self.out_dir).map_err(|e| DataError::io(&self.out_dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&self.out_dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if self.is_own_shard(&name) && !files.contains(&path) {
                std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
            }
        }
        self.committed = true;
        Ok(files)
    }

    /// `<prefix>-NNNNN.parquet`, as [`ShardWriter`] names its files.
    fn is_own_shard(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".parquet"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if !self.committed && self.created_out_dir {
            // Only succeeds when empty.
            let _ = std::fs::remove_dir(&self.out_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for (name, f) in
            SourceFormat::NAMES.iter().zip([SourceFormat::Climb, SourceFormat::QoqMed, SourceFormat::Mimic])
        {
            assert_eq!(name.parse::<SourceFormat>().unwrap(), f);
            assert_eq!(f.to_string(), *name);
        }
        assert_eq!("QoQ_Med".parse::<SourceFormat>().unwrap(), SourceFormat::QoqMed);
        let err = "llava".parse::<SourceFormat>().unwrap_err().to_string();
        assert!(err.contains("`llava`") && err.contains("climb, qoq-med, mimic"), "{err}");
    }

    #[test]
    fn own_shards_only() {
        let s = Staging {
            out_dir: PathBuf::new(),
            dir: PathBuf::from("/nonexistent/qoq-staging-test"),
            prefix: "geom_train".into(),
            created_out_dir: false,
            committed: true,
        };
        assert!(s.is_own_shard("geom_train-00000.parquet"));
        assert!(s.is_own_shard("geom_train-00012.parquet"));
        assert!(!s.is_own_shard("geom_train_upsampled-00000.parquet"));
        assert!(!s.is_own_shard("geom_train-x.parquet"));
        assert!(!s.is_own_shard("geom_train-.parquet"));
        assert!(!s.is_own_shard(".geom_train-00000.parquet.tmp"));
    }

    #[test]
    fn prefixes_are_file_name_safe() {
        assert_eq!(sanitize("ct-kits23-annotation train/x"), "ct-kits23-annotation_train_x");
    }
}
