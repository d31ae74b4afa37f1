//! Checkpoint weights: `model.safetensors`, or `model-0000X-of-0000Y.safetensors` shards
//! named by `model.safetensors.index.json`. Each tensor is read from the file straight
//! into its variable, so loading holds about one model in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::PolicyError;

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// transformers' default `max_shard_size` ("5GB": 5 x 10^9 bytes).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A JSON file, with errors naming it.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, PolicyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| PolicyError::Checkpoint(format!("{}: not JSON ({e})", path.display())))
}

/// Write `value` to `path` atomically (temporary file, then rename).
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), PolicyError> {
    let io = |e: std::io::Error| PolicyError::Checkpoint(format!("{}: {e}", path.display()));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(value).expect("JSON values serialise")).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// An error instead of libtorch's panic when `device` is a GPU this build or machine lacks.
pub(crate) fn check_device(device: tch::Device) -> Result<(), PolicyError> {
    if let tch::Device::Cuda(i) = device {
        let count = tch::Cuda::device_count();
        if !tch::Cuda::is_available() || i as i64 >= count {
            return Err(PolicyError::Input(format!(
                "device cuda:{i} is not available (this build sees {count} CUDA devices); build with CUDA (bash tools/setup-cuda.sh) or use the CPU"
            )));
        }
    }
    Ok(())
}

/// Tensors a checkpoint carries that its family does not use (e.g. `time_series_embedding.*`
/// in QoQ-Med's ECG-enabled releases): reported once, kept on the CPU and written back on
/// save, so an export loses nothing a later modality encoder could use.
#[derive(Debug, Default)]
pub(crate) struct ExtraTensors(Vec<(String, Tensor)>);

impl ExtraTensors {
    /// Read `names` from the checkpoint in `dir`; warns once on stderr when there are any.
    pub(crate) fn read(dir: &Path, mut names: Vec<String>, family: crate::Family) -> Result<Self, PolicyError> {
        if names.is_empty() {
            return Ok(Self::default());
        }
        names.sort();
        let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
        eprintln!(
            "warning: {}: {} tensors are not used by {} and are kept as they are (written back on save): {}{}",
            dir.display(),
            names.len(),
            family.model_type(),
            shown.join(", "),
            if names.len() > shown.len() { ", ..." } else { "" }
        );
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(names.len());
        for path in weight_files(dir)? {
            let file =
                std::fs::File::open(&path).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
            for (name, entry) in read_header(&file, &path)? {
                if wanted.contains(name.as_str()) {
                    let t = Tensor::empty(entry.shape.as_slice(), (entry.kind, tch::Device::Cpu));
                    read_into(&file, &entry, &t)
                        .map_err(|e| PolicyError::Checkpoint(format!("{}: reading `{name}`: {e}", path.display())))?;
                    out.push((name, t));
                }
            }
        }
        Ok(Self(out))
    }

    /// The kept tensors by their checkpoint names.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = (String, Tensor)> + '_ {
        self.0.iter().map(|(n, t)| (n.clone(), t.shallow_clone()))
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Every tensor's shape in the checkpoint in `dir`, by its name in the files (headers only).
pub(crate) fn tensor_shapes(dir: &Path) -> Result<BTreeMap<String, Vec<i64>>, PolicyError> {
    let mut out = BTreeMap::new();
    for path in weight_files(dir)? {
        let file =
            std::fs::File::open(&path).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        out.extend(read_header(&file, &path)?.into_iter().map(|(name, entry)| (name, entry.shape)));
    }
    Ok(out)
}

/// The weight files of a checkpoint folder.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(INDEX);
    let text = std::fs::read_to_string(&index_path)
        .map_err(|_| PolicyError::Checkpoint(format!("{}: neither {SINGLE} nor {INDEX} is there", dir.display())))?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PolicyError::Checkpoint(format!("{}: not JSON ({e})", index_path.display())))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| PolicyError::Checkpoint(format!("{}: no `weight_map` object", index_path.display())))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// One tensor of a safetensors file: dtype, shape and byte range in the file.
struct Entry {
    kind: Kind,
    shape: Vec<i64>,
    start: u64,
    end: u64,
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        _ => return None,
    })
}

/// The header of a safetensors file: `[u64 LE header length][JSON]`, data after it.
fn read_header(file: &std::fs::File, path: &Path) -> Result<Vec<(String, Entry)>, PolicyError> {
    use std::os::unix::fs::FileExt;
    let bad = |why: String| PolicyError::Checkpoint(format!("{}: not a safetensors file ({why})", path.display()));
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    if len > 100 << 20 || 8 + len > file_len {
        return Err(bad(format!("header length {len} does not fit the file")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact_at(&mut header, 8).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + len;
    let mut entries = Vec::new();
    for (name, info) in json {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let kind = kind_of(dtype).ok_or_else(|| bad(format!("`{name}` has unsupported dtype {dtype}")))?;
        let shape: Option<Vec<i64>> =
            info.get("shape").and_then(|s| s.as_array()).map(|a| a.iter().filter_map(|d| d.as_i64()).collect());
        let offsets: Option<Vec<u64>> =
            info.get("data_offsets").and_then(|s| s.as_array()).map(|a| a.iter().filter_map(|d| d.as_u64()).collect());
        let (Some(shape), Some([start, end])) = (shape, offsets.as_deref()) else {
            return Err(bad(format!("`{name}` lacks a shape or data_offsets")));
        };
        let bytes = shape.iter().product::<i64>().max(0) as u64 * kind.elt_size_in_bytes() as u64;
        if end < start || end - start != bytes || data_start + end > file_len {
            return Err(bad(format!("`{name}`: data_offsets {start}..{end} disagree with its shape or the file size")));
        }
        entries.push((name, Entry { kind, shape, start: data_start + start, end: data_start + end }));
    }
    entries.sort_by_key(|(_, e)| e.start);
    Ok(entries)
}

/// Read `entry`'s bytes into `target`, a contiguous CPU tensor of its shape and dtype.
fn read_into(file: &std::fs::File, entry: &Entry, target: &Tensor) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = (entry.end - entry.start) as usize;
    debug_assert!(target.device() == tch::Device::Cpu && target.is_contiguous() && target.kind() == entry.kind);
    if len > 0 {
        // SAFETY: `target` is a contiguous CPU tensor of exactly `len` bytes (shape and
        // dtype checked by the callers) that nothing else reads during the copy.
        let bytes = unsafe { std::slice::from_raw_parts_mut(target.data_ptr() as *mut u8, len) };
        file.read_exact_at(bytes, entry.start)?;
    }
    Ok(())
}

/// Copy every variable of `vars` from the checkpoint in `dir` (converting the dtype when
/// the file's differs). Every variable must be found with the right shape; tensors the
/// model does not use are returned by name (a tied model ignores a stray `lm_head.weight`).
///
/// Bytes are read straight into each variable's memory when dtype and device allow, else
/// through one tensor-sized buffer: peak memory is the model plus at most one tensor.
///
/// `rename` maps a checkpoint name to its variable name (a family whose published files
/// spell names otherwise, e.g. Qwen2.5-VL's `visual.*`). Unused names are returned as spelt
/// in the file.
pub(crate) fn load_into(
    vars: &HashMap<String, Tensor>,
    dir: &Path,
    rename: &dyn Fn(&str) -> String,
) -> Result<Vec<String>, PolicyError> {
    let mut found: HashSet<String> = HashSet::new();
    let mut unused = Vec::new();
    let _guard = tch::no_grad_guard();
    for path in weight_files(dir)? {
        let file =
            std::fs::File::open(&path).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        for (name, entry) in read_header(&file, &path)? {
            let Some(var) = vars.get(&rename(&name)) else {
                unused.push(name);
                continue;
            };
            let name = rename(&name);
            if entry.shape != var.size() {
                return Err(PolicyError::Checkpoint(format!(
                    "{}: `{name}` has shape {:?}, the config gives {:?}; is config.json from the same checkpoint?",
                    path.display(),
                    entry.shape,
                    var.size()
                )));
            }
            let read_err =
                |e: std::io::Error| PolicyError::Checkpoint(format!("{}: reading `{name}`: {e}", path.display()));
            let direct = var.device() == tch::Device::Cpu && var.kind() == entry.kind && var.is_contiguous();
            let target = if direct {
                var.shallow_clone()
            } else {
                Tensor::empty(entry.shape.as_slice(), (entry.kind, tch::Device::Cpu))
            };
            read_into(&file, &entry, &target).map_err(read_err)?;
            if !direct {
                var.shallow_clone().f_copy_(&target)?;
            }
            found.insert(name);
        }
    }
    let missing: BTreeSet<&String> = vars.keys().filter(|k| !found.contains(*k)).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
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
pub(crate) fn save(tensors: &[(String, Tensor)], dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
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
        let list: Vec<(&str, Tensor)> =
            shard.iter().map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous())).collect();
        Tensor::write_safetensors(&list, &tmp)?;
        written.push((tmp, dir.join(name)));
    }
    for (tmp, path) in written {
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    // The index last, once every file it names is in place.
    if shards.len() > 1 {
        let map: BTreeMap<String, String> = shards
            .iter()
            .zip(&names)
            .flat_map(|(shard, name)| shard.iter().map(move |(n, _)| (n.clone(), name.clone())))
            .collect();
        let total: u64 = tensors.iter().map(|(_, t)| bytes(t)).sum();
        write_index(&dir.join(INDEX), &map, total)?;
    }
    Ok(())
}

/// Writes a safetensors index (`metadata.total_size`, `weight_map` of name -> file, as
/// transformers reads it) atomically: `model.safetensors.index.json`, or any such index.
pub fn write_index(path: &Path, weight_map: &BTreeMap<String, String>, total_size: u64) -> Result<(), PolicyError> {
    write_json(path, &serde_json::json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map }))
}
