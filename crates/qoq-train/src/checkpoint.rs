//! Checkpoints: everything a run needs to continue exactly, written atomically.
//!
//! ```text
//! OUTPUT_DIR/checkpoints/step_N/
//!   model/                 Hugging Face folder: config.json, safetensors (+ index), tokenizer,
//!                          preprocessor config (what `export` and `diagnose` read)
//!   optimizer.safetensors  AdamW moments (exp_avg.NAME, exp_avg_sq.NAME) of the active phase
//!   trainer_state.json     steps, phase, optimizer step, data cursor, DRPO history, seed
//! ```
//! The folder is built as `.step_N.partial` and renamed into place when complete, so a
//! kill mid-write never leaves a `step_N` that looks complete but is not; leftovers of
//! killed writes are removed by the next write.
//!
//! Randomness needs no saved generator state: every draw (sampling, k-means seeds, data
//! order) comes from a stream keyed by (run seed, step, ...), so the step number is the state.
//!
//! Before a resume the checkpoint is checked whole ([`verify`]): the state parses, every
//! file is there and every safetensors file is as long as its header says. A damaged newest
//! checkpoint stops `--resume` with the damaged file and the newest older checkpoint that
//! is whole, for `--resume-from`; nothing is deleted.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use qoq_data::Cursor;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::advantage::DrpoHistory;
use crate::TrainError;

/// Files of the model folder copied along with the weights, when the source has them.
pub const MODEL_SIDE_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// `version` of the trainer_state.json this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The AdamW moments of one process (or of a ZeRO-1 run, gathered on rank 0).
const OPTIMIZER: &str = "optimizer.safetensors";
/// With sharded parameters each rank writes the moments of its units to its own file;
/// this index names the file of every moment (`weight_map`, as the model's index).
pub(crate) const OPTIMIZER_INDEX: &str = "optimizer.safetensors.index.json";

/// Largest safetensors shard of a checkpoint's model folder (5 GiB).
pub const MODEL_SHARD_BYTES: u64 = 5 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format of this file.
    pub version: u32,
    /// Steps done: SFT steps, then RL steps (the checkpoint's N is their sum).
    pub sft_steps_done: u64,
    pub rl_steps_done: u64,
    /// Optimizer steps of the active phase's optimizer.
    pub optimizer_step: u64,
    pub cursor: Cursor,
    pub drpo: DrpoHistory,
    pub seed: u64,
}

impl TrainerState {
    pub fn step(&self) -> u64 {
        self.sft_steps_done + self.rl_steps_done
    }
}

pub(crate) fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step_{step}"))
}

/// Writes checkpoint `step_N` under `root`: `write_model` fills the model folder it is
/// given; `optimizer` holds the moments.
pub(crate) fn save(
    root: &Path,
    state: &TrainerState,
    write_model: impl FnOnce(&Path) -> Result<(), TrainError>,
    source_model_dir: &Path,
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let partial = prepare(root, state.step())?;
    write_model(&partial.join("model"))?;
    let opt_path = partial.join(OPTIMIZER);
    if !optimizer.is_empty() {
        Tensor::write_safetensors(optimizer, &opt_path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", opt_path.display())))?;
    }
    finish(root, &partial, state, source_model_dir, keep)
}

/// The folder checkpoint `step` is built in (`.step_N.partial`, renamed when whole).
pub(crate) fn partial_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!(".step_{step}.partial"))
}

/// Starts checkpoint `step`: removes leftovers of killed writes and makes the empty
/// partial folder with its `model/` (where every rank of a sharded run then writes).
pub(crate) fn prepare(root: &Path, step: u64) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    remove_partials(root)?;
    let partial = partial_dir(root, step);
    let model_dir = partial.join("model");
    std::fs::create_dir_all(&model_dir).map_err(|e| TrainError::io(&model_dir, e))?;
    Ok(partial)
}

/// Completes a checkpoint whose weights and moments are in `partial`: the model's side
/// files, the trainer state, the rename into place and the pruning to `keep`.
pub(crate) fn finish(
    root: &Path,
    partial: &Path,
    state: &TrainerState,
    source_model_dir: &Path,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let step = state.step();
    let model_dir = partial.join("model");
    for name in MODEL_SIDE_FILES {
        let from = source_model_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, model_dir.join(name)).map_err(|e| TrainError::io(&from, e))?;
        }
    }
    let state_path = partial.join("trainer_state.json");
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    std::fs::write(&state_path, json).map_err(|e| TrainError::io(&state_path, e))?;
    sync_dir(partial);
    let dest = step_dir(root, step);
    if dest.exists() {
        // A checkpoint of the same step from an earlier attempt: replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
    }
    std::fs::rename(partial, &dest).map_err(|e| TrainError::io(&dest, e))?;
    sync_dir(root);
    if keep > 0 {
        // Only this checkpoint and older ones count.
        let all: Vec<(u64, PathBuf)> = list(root)?.into_iter().filter(|(n, _)| *n <= step).collect();
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
    }
    Ok(dest)
}

/// Flush a directory's entries to disk (best effort: not every filesystem allows it).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn remove_partials(root: &Path) -> Result<(), TrainError> {
    for entry in std::fs::read_dir(root).map_err(|e| TrainError::io(root, e))? {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step_") && name.ends_with(".partial") {
            std::fs::remove_dir_all(entry.path()).map_err(|e| TrainError::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Complete checkpoints under `root`, oldest first.
pub(crate) fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(root).map_err(|e| TrainError::io(root, e))? {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("step_").and_then(|n| n.parse::<u64>().ok()) {
            if entry.path().join("trainer_state.json").is_file() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn latest(root: &Path) -> Result<Option<PathBuf>, TrainError> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Reads a checkpoint's state and optimizer moments.
pub(crate) fn load(dir: &Path) -> Result<(TrainerState, BTreeMap<String, Tensor>), TrainError> {
    let state = read_state(dir).map_err(TrainError::Checkpoint)?;
    let mut moments = BTreeMap::new();
    for opt_path in optimizer_files(dir).map_err(TrainError::Checkpoint)? {
        if opt_path.is_file() {
            let tensors = Tensor::read_safetensors(&opt_path)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", opt_path.display())))?;
            moments.extend(tensors);
        }
    }
    Ok((state, moments))
}

fn read_state(dir: &Path) -> Result<TrainerState, String> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a valid trainer state: {e}", state_path.display()))?;
    if state.version != FORMAT_VERSION {
        return Err(format!("{}: format version {} is not {FORMAT_VERSION}", state_path.display(), state.version));
    }
    Ok(state)
}

/// Checks that checkpoint `dir` is whole without loading it: trainer_state.json parses,
/// the model folder has its config.json and every weight file (one `model.safetensors`, or
/// the shards its index lists), the optimizer moments are there once the optimizer has
/// stepped, and every safetensors file is exactly as long as its header says. The error
/// names the first damaged or missing file.
pub fn verify(dir: &Path) -> Result<TrainerState, String> {
    let state = read_state(dir)?;
    let model = dir.join("model");
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("{}: not valid JSON: {e}", config.display()))?;
    let index = model.join("model.safetensors.index.json");
    let weights: Vec<PathBuf> =
        if index.is_file() { indexed_files(&index)? } else { vec![model.join("model.safetensors")] };
    for file in &weights {
        check_safetensors(file)?;
    }
    for optimizer in optimizer_files(dir)? {
        if optimizer.exists() || state.optimizer_step > 0 {
            check_safetensors(&optimizer)?;
        }
    }
    Ok(state)
}

/// The files `index` (a safetensors index: `weight_map` of name -> file) names, beside it.
fn indexed_files(index: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no weight_map", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The moment files of checkpoint `dir`: those its optimizer index names, else the one file.
fn optimizer_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let index = dir.join(OPTIMIZER_INDEX);
    if index.is_file() {
        indexed_files(&index)
    } else {
        Ok(vec![dir.join(OPTIMIZER)])
    }
}

/// Bytes per element of a safetensors dtype.
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// Checks that a safetensors file is whole: an 8-byte header length, a JSON header, each
/// tensor's byte range as long as its dtype and shape need, and the file ending exactly
/// where the last range does (a truncated file is shorter).
pub(crate) fn check_safetensors(path: &Path) -> Result<(), String> {
    let at = |m: String| format!("{}: {m}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| at(e.to_string()))?;
    let size = file.metadata().map_err(|e| at(e.to_string()))?.len();
    let mut len = [0u8; 8];
    if size < 8 || file.read_exact(&mut len).is_err() {
        return Err(at(format!("truncated: {size} bytes, shorter than a safetensors header")));
    }
    let header_len = u64::from_le_bytes(len);
    if header_len > size - 8 {
        return Err(at(format!("truncated: {size} bytes, its header alone claims {header_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| at(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| at(format!("not a safetensors file (its header is not JSON: {e})")))?;
    let mut end = 0u64;
    for (name, info) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        let bad = || at(format!("tensor `{name}` has a malformed header entry"));
        let dtype = info.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?;
        let shape: Vec<u64> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(bad)?
            .iter()
            .map(|d| d.as_u64().ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(bad)?
            .iter()
            .map(|d| d.as_u64().ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        let [begin, stop] = offsets[..] else { return Err(bad()) };
        let elem = dtype_bytes(dtype).ok_or_else(|| at(format!("tensor `{name}` has unknown dtype {dtype}")))?;
        let need = shape.iter().product::<u64>() * elem;
        if stop < begin || stop - begin != need {
            return Err(at(format!(
                "tensor `{name}` spans {} bytes, its {dtype} shape {shape:?} needs {need}",
                stop.saturating_sub(begin)
            )));
        }
        end = end.max(stop);
    }
    let expected = 8 + header_len + end;
    if size < expected {
        return Err(at(format!("truncated: {size} bytes, its header describes {expected}")));
    }
    if size > expected {
        return Err(at(format!("{size} bytes, its header describes {expected} (trailing bytes)")));
    }
    Ok(())
}

/// Where a run starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A fresh run (refused when run.output_dir already holds checkpoints).
    Fresh,
    /// The newest checkpoint in run.output_dir (`--resume`), if any; a fresh run if none.
    Latest,
    /// That checkpoint folder (`--resume-from PATH`).
    From(PathBuf),
}

impl From<bool> for Resume {
    /// `true`: [`Resume::Latest`]; `false`: [`Resume::Fresh`].
    fn from(resume: bool) -> Self {
        if resume {
            Resume::Latest
        } else {
            Resume::Fresh
        }
    }
}

/// The checkpoint a run under `root` (OUTPUT_DIR/checkpoints) continues from, checked whole
/// by [`verify`]. For [`Resume::Latest`] a damaged newest checkpoint is an error naming the
/// damaged file and the newest older checkpoint that is whole (to pass as `--resume-from`).
/// For [`Resume::From`], with `main` (the rank that writes), checkpoints under `root` after
/// the one resumed from belong to the abandoned continuation: they are renamed
/// `step_N.superseded` (never deleted), so that a later `--resume` follows the new run.
pub(crate) fn resume_point(root: &Path, resume: &Resume, main: bool) -> Result<Option<PathBuf>, TrainError> {
    match resume {
        Resume::Fresh => match latest(root)? {
            Some(_) => Err(TrainError::Config(format!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another run.output_dir",
                root.display()
            ))),
            None => Ok(None),
        },
        Resume::Latest => {
            let all = list(root)?;
            let Some((_, newest)) = all.last() else { return Ok(None) };
            let Err(problem) = verify(newest) else { return Ok(Some(newest.clone())) };
            let advice = match all.iter().rev().skip(1).find(|(_, dir)| verify(dir).is_ok()) {
                Some((_, dir)) => format!(
                    "the newest complete checkpoint is {}: continue from it with `--resume-from {}` (the steps after it are trained again; nothing was deleted)",
                    dir.display(),
                    dir.display()
                ),
                None => format!(
                    "no older checkpoint under {} is complete (nothing was deleted): start afresh in another run.output_dir, or move the damaged checkpoint out of the way",
                    root.display()
                ),
            };
            Err(TrainError::Checkpoint(format!("cannot resume from {}: {problem}\n{advice}", newest.display())))
        }
        Resume::From(dir) => {
            let state = verify(dir).map_err(|problem| {
                TrainError::Checkpoint(format!("cannot resume from {}: {problem}", dir.display()))
            })?;
            if main {
                for (n, later) in list(root)?.into_iter().filter(|(n, _)| *n > state.step()) {
                    let aside = (1..)
                        .map(|i| {
                            root.join(if i == 1 {
                                format!("step_{n}.superseded")
                            } else {
                                format!("step_{n}.superseded-{i}")
                            })
                        })
                        .find(|p| !p.exists())
                        .expect("a free name");
                    std::fs::rename(&later, &aside).map_err(|e| TrainError::io(&later, e))?;
                    eprintln!(
                        "note: {} is after the checkpoint resumed from: kept as {}",
                        later.display(),
                        aside.display()
                    );
                }
            }
            Ok(Some(dir.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sft: u64, rl: u64) -> TrainerState {
        TrainerState {
            version: FORMAT_VERSION,
            sft_steps_done: sft,
            rl_steps_done: rl,
            optimizer_step: 3,
            cursor: Cursor::default(),
            drpo: DrpoHistory::default(),
            seed: 0,
        }
    }

    #[test]
    fn writes_atomically_keeps_the_latest_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoints");
        let moments = vec![("exp_avg.w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        for rl in 1..=3 {
            save(
                &root,
                &state(2, rl),
                |d| std::fs::write(d.join("w"), b"x").map_err(|e| TrainError::io(d, e)),
                tmp.path(),
                &moments,
                2,
            )
            .unwrap();
        }
        let steps: Vec<u64> = list(&root).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(steps, vec![4, 5]);
        let (s, m) = load(&latest(&root).unwrap().unwrap()).unwrap();
        assert_eq!(s, state(2, 3));
        assert_eq!(Vec::<f32>::try_from(&m["exp_avg.w"]).unwrap(), vec![1.0, 2.0]);

        // A write that fails half-way leaves no step_6 and does not disturb step_5.
        let err =
            save(&root, &state(2, 4), |_| Err(TrainError::Checkpoint("disk full".into())), tmp.path(), &moments, 2);
        assert!(err.is_err());
        assert_eq!(latest(&root).unwrap().unwrap(), step_dir(&root, 5));
        // The next write clears the leftover.
        save(&root, &state(2, 4), |_| Ok(()), tmp.path(), &moments, 0).unwrap();
        assert!(!root.join(".step_6.partial").exists());
        assert_eq!(latest(&root).unwrap().unwrap(), step_dir(&root, 6));
    }

    /// A checkpoint whose model folder holds a config and one weight file.
    fn save_whole(root: &Path, s: &TrainerState) -> PathBuf {
        let moments = vec![("exp_avg.w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let write_model = |d: &Path| {
            std::fs::write(d.join("config.json"), "{}").map_err(|e| TrainError::io(d, e))?;
            Tensor::write_safetensors(&[("w", Tensor::from_slice(&[1.0f32, 2.0, 3.0]))], d.join("model.safetensors"))
                .map_err(TrainError::from)
        };
        save(root, s, write_model, root, &moments, 0).unwrap()
    }

    fn truncate(path: &Path) {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len - 3).unwrap();
    }

    #[test]
    fn safetensors_headers_are_checked_against_the_file_length() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.safetensors");
        Tensor::write_safetensors(
            &[("a", Tensor::from_slice(&[1.0f32; 10])), ("b", Tensor::from_slice(&[1i64, 2]))],
            &path,
        )
        .unwrap();
        check_safetensors(&path).unwrap();
        truncate(&path);
        let err = check_safetensors(&path).unwrap_err();
        assert!(err.contains("t.safetensors") && err.contains("truncated"), "{err}");
        std::fs::write(&path, [1u8, 2, 3]).unwrap();
        assert!(check_safetensors(&path).unwrap_err().contains("truncated"));
        std::fs::write(&path, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{']).unwrap();
        assert!(check_safetensors(&path).unwrap_err().contains("truncated"));
        std::fs::write(&path, [3u8, 0, 0, 0, 0, 0, 0, 0, b'x', b'y', b'z']).unwrap();
        assert!(check_safetensors(&path).unwrap_err().contains("not a safetensors file"));
    }

    #[test]
    fn a_damaged_newest_checkpoint_names_the_file_and_the_newest_whole_one() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoints");
        for rl in 1..=3 {
            save_whole(&root, &state(0, rl));
        }
        assert_eq!(resume_point(&root, &Resume::Latest, true).unwrap(), Some(step_dir(&root, 3)));
        // Damage step_3 three ways and step_2 one way: the advice skips to step_1.
        truncate(&step_dir(&root, 2).join("optimizer.safetensors"));
        for (file, damage) in [
            ("model/model.safetensors", "truncated"),
            ("optimizer.safetensors", "truncated"),
            ("trainer_state.json", "not a valid trainer state"),
            ("model/config.json", "No such file"),
        ] {
            let path = step_dir(&root, 3).join(file);
            let saved = std::fs::read(&path).unwrap();
            match file {
                "trainer_state.json" => std::fs::write(&path, &saved[..saved.len() / 2]).unwrap(),
                "model/config.json" => std::fs::remove_file(&path).unwrap(),
                _ => truncate(&path),
            }
            let err = resume_point(&root, &Resume::Latest, true).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(damage), "{file}: {err}");
            assert!(err.contains(&format!("--resume-from {}", step_dir(&root, 1).display())), "{file}: {err}");
            std::fs::write(&path, saved).unwrap();
        }
        // Nothing was deleted or moved by the failed resumes.
        assert_eq!(list(&root).unwrap().len(), 3);
        // Resuming from step_1 sets the later ones aside under new names.
        assert_eq!(resume_point(&root, &Resume::From(step_dir(&root, 1)), true).unwrap(), Some(step_dir(&root, 1)));
        assert_eq!(list(&root).unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), vec![1]);
        assert!(
            root.join("step_2.superseded/optimizer.safetensors").is_file()
                && root.join("step_3.superseded/model/model.safetensors").is_file()
        );
        // A damaged checkpoint named by --resume-from is refused, naming the file.
        let err = resume_point(&root, &Resume::From(root.join("step_2.superseded")), true).unwrap_err().to_string();
        assert!(err.contains("step_2.superseded/optimizer.safetensors"), "{err}");
        // A fresh run refuses a folder with checkpoints.
        assert!(resume_point(&root, &Resume::Fresh, true).unwrap_err().to_string().contains("--resume"));
    }

    #[test]
    fn pruning_keeps_checkpoints_after_the_one_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoints");
        save_whole(&root, &state(0, 9));
        let moments = vec![("exp_avg.w".to_string(), Tensor::from_slice(&[1.0f32]))];
        for rl in 1..=3 {
            save(&root, &state(0, rl), |_| Ok(()), tmp.path(), &moments, 2).unwrap();
        }
        assert_eq!(list(&root).unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), vec![2, 3, 9]);
    }
}
