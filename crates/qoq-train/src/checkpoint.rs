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

use std::collections::BTreeMap;
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

pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step_{step}"))
}

/// Writes checkpoint `step_N` under `root`: `write_model` fills the model folder it is
/// given; `optimizer` holds the moments.
pub fn save(
    root: &Path,
    state: &TrainerState,
    write_model: impl FnOnce(&Path) -> Result<(), TrainError>,
    source_model_dir: &Path,
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let step = state.step();
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    remove_partials(root)?;
    let partial = root.join(format!(".step_{step}.partial"));
    let model_dir = partial.join("model");
    std::fs::create_dir_all(&model_dir).map_err(|e| TrainError::io(&model_dir, e))?;
    write_model(&model_dir)?;
    for name in MODEL_SIDE_FILES {
        let from = source_model_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, model_dir.join(name)).map_err(|e| TrainError::io(&from, e))?;
        }
    }
    let opt_path = partial.join("optimizer.safetensors");
    if !optimizer.is_empty() {
        Tensor::write_safetensors(optimizer, &opt_path).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", opt_path.display())))?;
    }
    let state_path = partial.join("trainer_state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    std::fs::write(&state_path, json).map_err(|e| TrainError::io(&state_path, e))?;
    sync_dir(&partial);
    let dest = step_dir(root, step);
    if dest.exists() {
        // A checkpoint of the same step from an earlier attempt: replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
    }
    std::fs::rename(&partial, &dest).map_err(|e| TrainError::io(&dest, e))?;
    sync_dir(root);
    if keep > 0 {
        let all = list(root)?;
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
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
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
pub fn load(dir: &Path) -> Result<(TrainerState, BTreeMap<String, Tensor>), TrainError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    if state.version != 1 {
        return Err(TrainError::Checkpoint(format!("{}: format version {} is not 1", state_path.display(), state.version)));
    }
    let opt_path = dir.join("optimizer.safetensors");
    let moments = if opt_path.is_file() {
        Tensor::read_safetensors(&opt_path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", opt_path.display())))?
            .into_iter()
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok((state, moments))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sft: u64, rl: u64) -> TrainerState {
        TrainerState { version: 1, sft_steps_done: sft, rl_steps_done: rl, optimizer_step: 3, cursor: Cursor::default(), drpo: DrpoHistory::default(), seed: 0 }
    }

    #[test]
    fn writes_atomically_keeps_the_latest_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("checkpoints");
        let moments = vec![("exp_avg.w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        for rl in 1..=3 {
            save(&root, &state(2, rl), |d| std::fs::write(d.join("w"), b"x").map_err(|e| TrainError::io(d, e)), tmp.path(), &moments, 2).unwrap();
        }
        let steps: Vec<u64> = list(&root).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(steps, vec![4, 5]);
        let (s, m) = load(&latest(&root).unwrap().unwrap()).unwrap();
        assert_eq!(s, state(2, 3));
        assert_eq!(Vec::<f32>::try_from(&m["exp_avg.w"]).unwrap(), vec![1.0, 2.0]);

        // A write that fails half-way leaves no step_6 and does not disturb step_5.
        let err = save(&root, &state(2, 4), |_| Err(TrainError::Checkpoint("disk full".into())), tmp.path(), &moments, 2);
        assert!(err.is_err());
        assert_eq!(latest(&root).unwrap().unwrap(), step_dir(&root, 5));
        // The next write clears the leftover.
        save(&root, &state(2, 4), |_| Ok(()), tmp.path(), &moments, 0).unwrap();
        assert!(!root.join(".step_6.partial").exists());
        assert_eq!(latest(&root).unwrap().unwrap(), step_dir(&root, 6));
    }
}
