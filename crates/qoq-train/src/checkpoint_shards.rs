//! Checkpoints of sharded parameters, written by every rank without gathering the model on
//! one: unit k's fp32 masters and moments are assembled on rank k mod W (one unit at a
//! time), and each rank writes its units to its own files:
//!
//! ```text
//! step_N/model/model-0000I-of-0000M.safetensors   the units of the I-th writing rank (rank
//!                                                 0's also holds the frozen weights and
//!                                                 extra tensors)
//! step_N/model/model.safetensors.index.json       name -> file, as transformers reads it
//! step_N/optimizer-0000I-of-0000M.safetensors     the moments of the same units
//! step_N/optimizer.safetensors.index.json
//! ```
//!
//! The result is an ordinary sharded Hugging Face folder plus moments by name, the format
//! every other mode writes: it resumes with any world size and any sharding, and `export`
//! and `diagnose` read it unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use qoq_policy::weights::write_index;
use tch::{Device, Tensor};

use crate::checkpoint::{self, OPTIMIZER_INDEX};
use crate::fsdp::{FlatShards, NamedTensors};
use crate::{TrainError, Trainer};

impl Trainer {
    /// [`Trainer::save`] with sharded parameters. Every rank must call it.
    pub(crate) fn save_sharded(&self, flat: &FlatShards) -> Result<Option<PathBuf>, TrainError> {
        let root = self.out.join("checkpoints");
        let step = self.state.step();
        let (weights, moments) = flat.checkpoint_share()?;
        let names = FileNames::new(flat, self.policy.as_ref(), self.dp.world());
        if self.dp.is_main() {
            checkpoint::prepare(&root, step)?;
        }
        self.dp.group.barrier()?;
        let partial = checkpoint::partial_dir(&root, step);
        let rank = self.dp.rank();
        let rename = |v: NamedTensors| -> NamedTensors {
            v.into_iter().map(|(n, t)| (self.policy.checkpoint_name(&n), t)).collect()
        };
        let mut mine = rename(weights);
        if self.dp.is_main() {
            mine.extend(rename(names.frozen(self.policy.as_ref())));
            mine.extend(self.policy.extra_tensors());
        }
        // Each rank writes its files; a failure stops every rank at the barrier's timeout
        // at the latest, and no step_N appears.
        let written = write(&partial.join("model"), &names.model_file(rank), &mine)
            // Moments keep the in-memory names, as every optimizer saves and loads them.
            .and_then(|()| write(&partial, &names.optimizer_file(rank), &moments));
        self.dp.group.barrier()?;
        written?;
        let dest = if self.dp.is_main() {
            let model = partial.join("model");
            self.policy.save_config(&model)?;
            let (weight_map, total) = names.weight_map(self.policy.as_ref(), &mine);
            write_index(&model.join("model.safetensors.index.json"), &weight_map, total)?;
            let (moment_map, moment_total) = names.moment_map();
            write_index(&partial.join(OPTIMIZER_INDEX), &moment_map, moment_total)?;
            Some(checkpoint::finish(
                &root,
                &partial,
                &self.state,
                &self.config.model.path,
                self.config.run.keep_checkpoints,
            )?)
        } else {
            None
        };
        self.dp.group.barrier()?;
        Ok(dest)
    }
}

/// Which rank writes which file, known alike on every rank.
struct FileNames {
    /// (name, writing rank, elements) of every trainable parameter.
    writers: Vec<(String, usize, i64)>,
    /// Ranks that write anything, in order; the frozen file is after them.
    ranks: Vec<usize>,
    files: usize,
}

impl FileNames {
    fn new(flat: &FlatShards, policy: &dyn qoq_policy::Policy, world: usize) -> Self {
        let writers = flat.writers();
        let mut ranks: BTreeSet<usize> = writers.iter().map(|(_, r, _)| *r).collect();
        let has_frozen = !Self::frozen_names(policy, &writers).is_empty() || !policy.extra_tensors().is_empty();
        if has_frozen {
            ranks.insert(0);
        }
        let ranks: Vec<usize> = ranks.into_iter().filter(|r| *r < world.max(1)).collect();
        let files = ranks.len().max(1);
        Self { writers, ranks, files }
    }

    fn frozen_names(policy: &dyn qoq_policy::Policy, writers: &[(String, usize, i64)]) -> Vec<String> {
        let trainable: BTreeSet<&str> = writers.iter().map(|(n, _, _)| n.as_str()).collect();
        policy.var_store().variables().into_keys().filter(|n| !trainable.contains(n.as_str())).collect()
    }

    /// Rank 0's frozen weights, on the CPU.
    fn frozen(&self, policy: &dyn qoq_policy::Policy) -> NamedTensors {
        let vars = policy.var_store().variables();
        Self::frozen_names(policy, &self.writers)
            .into_iter()
            .filter_map(|n| vars.get(&n).map(|t| (n.clone(), t.detach().to_device(Device::Cpu))))
            .collect()
    }

    fn index_of(&self, rank: usize) -> Option<usize> {
        self.ranks.iter().position(|r| *r == rank).map(|i| i + 1)
    }

    fn model_file(&self, rank: usize) -> Option<String> {
        self.index_of(rank).map(|i| format!("model-{i:05}-of-{:05}.safetensors", self.files))
    }

    fn optimizer_file(&self, rank: usize) -> Option<String> {
        self.index_of(rank).map(|i| format!("optimizer-{i:05}-of-{:05}.safetensors", self.files))
    }

    /// Every weight's file (checkpoint names) and the total bytes, from rank 0's view:
    /// the trainable ones by their writer, the rest in rank 0's file.
    fn weight_map(&self, policy: &dyn qoq_policy::Policy, rank0: &NamedTensors) -> (BTreeMap<String, String>, u64) {
        let mut map = BTreeMap::new();
        let mut total = 0u64;
        for (name, rank, numel) in &self.writers {
            if let Some(file) = self.model_file(*rank) {
                map.insert(policy.checkpoint_name(name), file);
            }
            // The masters are fp32 whatever the model computes in.
            total += *numel as u64 * 4;
        }
        let trainable: BTreeSet<String> = map.keys().cloned().collect();
        if let Some(file) = self.model_file(0) {
            for (name, t) in rank0.iter().filter(|(n, _)| !trainable.contains(n)) {
                map.insert(name.clone(), file.clone());
                total += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
            }
        }
        (map, total)
    }

    fn moment_map(&self) -> (BTreeMap<String, String>, u64) {
        let mut map = BTreeMap::new();
        let mut total = 0u64;
        for (name, rank, numel) in &self.writers {
            let Some(file) = self.optimizer_file(*rank) else { continue };
            for prefix in ["exp_avg", "exp_avg_sq"] {
                map.insert(format!("{prefix}.{name}"), file.clone());
            }
            total += *numel as u64 * 8;
        }
        (map, total)
    }
}

fn write(dir: &Path, file: &Option<String>, tensors: &NamedTensors) -> Result<(), TrainError> {
    let Some(file) = file else { return Ok(()) };
    let path = dir.join(file);
    let list: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.contiguous())).collect();
    Tensor::write_safetensors(&list, &path).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}
