//! ECG-JEPA release checkpoints: `torch.save({'encoder': MaskTransformer.state_dict(),
//! 'epoch': e}, 'epochN.pth')`, keys as ours without the `time_series_embedding.encoder.`
//! prefix. Read in Rust ([`qoq_data::torch_file`]); no Python or conversion step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::Tensor;

use super::config::{EcgEncoderConfig, PREFIX};
use crate::PolicyError;

/// Tensors by name: (shape, values).
pub(crate) type Named = BTreeMap<String, (Vec<i64>, Vec<f32>)>;

/// The encoder's tensors in `path`, under our names (`time_series_embedding.encoder.*`).
pub(crate) fn read(path: &Path) -> Result<Named, PolicyError> {
    let tensors = qoq_data::torch_file::read_tensors(path).map_err(|e| PolicyError::Checkpoint(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        // A release nests the state dict under 'encoder'; a bare state dict is taken too.
        let key = name.strip_prefix("encoder.").unwrap_or(&name);
        let shape = t.shape.iter().map(|&d| d as i64).collect();
        out.insert(format!("{PREFIX}encoder.{key}"), (shape, t.to_f32()));
    }
    if !out.keys().any(|k| k.ends_with("encoder.W_P.weight")) {
        return Err(PolicyError::Checkpoint(format!(
            "{}: no `encoder.W_P.weight`: not an ECG-JEPA checkpoint (torch.save({{'encoder': state_dict, 'epoch': e}}))",
            path.display()
        )));
    }
    Ok(out)
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
