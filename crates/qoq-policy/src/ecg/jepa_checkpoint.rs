//! ECG-JEPA release checkpoints: `torch.save({'encoder': MaskTransformer.state_dict(),
//! 'epoch': e}, 'epochN.pth')`, keys as ours without the `time_series_embedding.encoder.`
//! prefix. Read in Rust ([`qoq_data::torch_file`]); no Python or conversion step.
//!
//! A `.safetensors` file of the encoder's weights is read too, its keys bare (`W_P.weight`),
//! under `encoder.`, or under ours (`time_series_embedding.encoder.`): what
//! `pretrain-ecg-encoder` writes, or a release converted once to safetensors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::Tensor;

use super::config::{EcgEncoderConfig, PREFIX};
use crate::PolicyError;

/// Tensors by name: (shape, values).
pub(crate) type Named = BTreeMap<String, (Vec<i64>, Vec<f32>)>;

/// One tensor's shape and f32 values.
type ShapeValues = (Vec<i64>, Vec<f32>);

/// The encoder's tensors in `path`, under our names (`time_series_embedding.encoder.*`).
pub(crate) fn read(path: &Path) -> Result<Named, PolicyError> {
    let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path)?
    } else {
        let tensors = qoq_data::torch_file::read_tensors(path).map_err(|e| PolicyError::Checkpoint(e.to_string()))?;
        tensors.into_iter().map(|(name, t)| (name, (t.shape.iter().map(|&d| d as i64).collect(), t.to_f32()))).collect()
    };
    let out: Named = tensors.into_iter().map(|(name, tensor)| (our_name(&name), tensor)).collect();
    if !out.keys().any(|k| k.ends_with("encoder.W_P.weight")) {
        return Err(PolicyError::Checkpoint(format!(
            "{}: no `encoder.W_P.weight`: not an ECG-JEPA checkpoint (torch.save({{'encoder': state_dict, 'epoch': e}}))",
            path.display()
        )));
    }
    Ok(out)
}

/// A checkpoint key under our name: a release nests the state dict under `encoder.`; a bare
/// state dict, or one already under `time_series_embedding.encoder.`, is taken too.
fn our_name(name: &str) -> String {
    let name = name.strip_prefix(PREFIX).unwrap_or(name);
    let key = name.strip_prefix("encoder.").unwrap_or(name);
    format!("{PREFIX}encoder.{key}")
}

/// A safetensors file's tensors as f32 (shape, values), in the file's order.
fn read_safetensors(path: &Path) -> Result<Vec<(String, ShapeValues)>, PolicyError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| PolicyError::Checkpoint(format!("{}: not a readable safetensors file: {e}", path.display())))?;
    tensors
        .into_iter()
        .map(|(name, t)| {
            let shape = t.size();
            let flat = t.to_kind(tch::Kind::Float).contiguous().view(-1);
            let values = Vec::<f32>::try_from(&flat)
                .map_err(|e| PolicyError::Checkpoint(format!("{}: `{name}`: {e}", path.display())))?;
            Ok((name, (shape, values)))
        })
        .collect()
}

/// The encoder sizes of the checkpoint at `path` from a `.safetensors` file's header alone
/// (the memory plan's cheap look); `None` for a `.pth`, whose shapes need the whole file.
pub fn encoder_sizes(path: &Path) -> Result<Option<EcgEncoderConfig>, PolicyError> {
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(None);
    }
    let bad = |what: String| PolicyError::Checkpoint(format!("{}: {what}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut len).map_err(|e| bad(format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("a safetensors header of {len} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; len as usize];
    std::io::Read::read_exact(&mut file, &mut header).map_err(|e| bad(format!("truncated safetensors header: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let mut shapes = BTreeMap::new();
    for (name, entry) in header.as_object().into_iter().flatten() {
        let Some(shape) = entry.get("shape").and_then(|s| s.as_array()) else { continue };
        shapes.insert(our_name(name), shape.iter().filter_map(|d| d.as_i64()).collect());
    }
    EcgEncoderConfig::infer(&shapes).map(Some).map_err(bad)
}

/// The encoder sizes the shapes of `file` (read from `path`) imply.
pub(crate) fn config_of(file: &Named, path: &Path) -> Result<EcgEncoderConfig, PolicyError> {
    let shapes = file.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
    EcgEncoderConfig::infer(&shapes).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))
}

/// Copies an ECG-JEPA checkpoint into the encoder's variables (`vars`: the policy's
/// variables; those under `time_series_embedding.encoder.` are filled). Every encoder
/// variable must be in the file with its shape; the file's other entries (the
/// pretraining's mask token, say) are skipped and listed on stderr.
pub fn load_jepa_checkpoint(vars: &HashMap<String, Tensor>, path: &Path) -> Result<(), PolicyError> {
    copy_into(vars, read(path)?, path)
}

/// [`load_jepa_checkpoint`] of an already read `file` (from `path`, for messages).
pub(crate) fn copy_into(vars: &HashMap<String, Tensor>, mut file: Named, path: &Path) -> Result<(), PolicyError> {
    let _guard = tch::no_grad_guard();
    let wanted = format!("{PREFIX}encoder.");
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(&wanted)).collect();
    names.sort();
    for name in names {
        let short = name.strip_prefix(PREFIX).unwrap_or(name);
        let (shape, values) = file.remove(name).ok_or_else(|| {
            PolicyError::Checkpoint(format!("{}: `{short}` is missing from the ECG-JEPA checkpoint", path.display()))
        })?;
        let var = &vars[name];
        if shape != var.size() {
            return Err(PolicyError::Checkpoint(format!(
                "{}: `{short}` has shape {shape:?}, the encoder needs {:?}",
                path.display(),
                var.size()
            )));
        }
        let t = Tensor::from_slice(&values).view(shape.as_slice());
        var.shallow_clone().copy_(&t.to_kind(var.kind()).to_device(var.device()));
    }
    if !file.is_empty() {
        let skipped: Vec<&str> = file.keys().map(|k| k.strip_prefix(PREFIX).unwrap_or(k)).collect();
        eprintln!("note: {}: not used by the encoder, skipped: {}", path.display(), skipped.join(", "));
    }
    Ok(())
}
