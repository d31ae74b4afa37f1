//! Checkpoint weights: `model.safetensors`, or `model-0000X-of-0000Y.safetensors` shards
//! named by `model.safetensors.index.json`. Files are memory-mapped and each tensor is
//! copied once, straight into its variable, so loading holds about one model in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::PolicyError;

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// The weight files of a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(INDEX);
    let text = std::fs::read_to_string(&index_path).map_err(|_| {
        PolicyError::Checkpoint(format!("{}: neither {SINGLE} nor {INDEX} is there", dir.display()))
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PolicyError::Checkpoint(format!("{}: not JSON ({e})", index_path.display())))?;
    let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        PolicyError::Checkpoint(format!("{}: no `weight_map` object", index_path.display()))
    })?;
    let files: std::collections::BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        _ => return None,
    })
}

/// Copy every variable of `vars` from the checkpoint in `dir` (converting the dtype when
/// the file's differs). Every variable must be found with the right shape; tensors the
/// model does not use are returned by name (a tied model ignores a stray `lm_head.weight`).
pub fn load_into(vars: &HashMap<String, Tensor>, dir: &Path) -> Result<Vec<String>, PolicyError> {
    let mut found: HashSet<String> = HashSet::new();
    let mut unused = Vec::new();
    let _guard = tch::no_grad_guard();
    for path in weight_files(dir)? {
        let file = std::fs::File::open(&path)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        // SAFETY: the file is opened read-only and not modified while mapped (a checkpoint
        // being rewritten under a running load is outside what we support).
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| PolicyError::Checkpoint(format!("{}: cannot map ({e})", path.display())))?;
        let tensors = SafeTensors::deserialize(&mmap)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: not a safetensors file ({e})", path.display())))?;
        for (name, view) in tensors.tensors() {
            let Some(var) = vars.get(&name) else {
                unused.push(name);
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(PolicyError::Checkpoint(format!(
                    "{}: `{name}` has shape {shape:?}, the config gives {:?}; is config.json from the same checkpoint?",
                    path.display(),
                    var.size()
                )));
            }
            let kind = kind_of(view.dtype()).ok_or_else(|| {
                PolicyError::Checkpoint(format!("{}: `{name}` has unsupported dtype {:?}", path.display(), view.dtype()))
            })?;
            let source = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            var.shallow_clone().f_copy_(&source)?;
            found.insert(name);
        }
    }
    let missing: BTreeMap<&String, ()> = vars.keys().filter(|k| !found.contains(*k)).map(|k| (k, ())).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.keys().take(5).map(|s| s.as_str()).collect();
        return Err(PolicyError::Checkpoint(format!(
            "{}: {} weights are missing, e.g. {}",
            dir.display(),
            missing.len(),
            names.join(", ")
        )));
    }
    unused.sort();
    Ok(unused)
}

/// Write `tensors` (name -> tensor) as a checkpoint folder's weights: one
/// `model.safetensors`, or `model-0000X-of-0000Y.safetensors` shards of at most
/// `max_shard_bytes` plus `model.safetensors.index.json`, as transformers lays them out.
/// Files are written under temporary names and renamed at the end, so an interrupted save
/// never leaves a half-written checkpoint under the final names.
pub fn save(tensors: &[(String, Tensor)], dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
    let io = |e: std::io::Error| PolicyError::Checkpoint(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0u64;
    for item in sorted {
        let size = bytes(&item.1);
        if current > 0 && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("one shard at least").push(item);
        current += size;
    }
    let names: Vec<String> = if shards.len() == 1 {
        vec![SINGLE.to_string()]
    } else {
        (1..=shards.len()).map(|i| format!("model-{i:05}-of-{:05}.safetensors", shards.len())).collect()
    };
    let mut written = Vec::new();
    for (shard, name) in shards.iter().zip(&names) {
        let tmp = dir.join(format!(".{name}.tmp"));
        let list: Vec<(&str, Tensor)> = shard.iter().map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous())).collect();
        Tensor::write_safetensors(&list, &tmp)?;
        written.push((tmp, dir.join(name)));
    }
    if shards.len() > 1 {
        let mut map = serde_json::Map::new();
        for (shard, name) in shards.iter().zip(&names) {
            for (n, _) in shard {
                map.insert(n.clone(), serde_json::Value::from(name.as_str()));
            }
        }
        let total: u64 = tensors.iter().map(|(_, t)| bytes(t)).sum();
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map });
        let tmp = dir.join(format!(".{INDEX}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&index).expect("JSON values serialise")).map_err(io)?;
        written.push((tmp, dir.join(INDEX)));
    }
    for (tmp, path) in written {
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(())
}
