//! A pure-Rust reader for files written by Python's `torch.save` in its zip format (the
//! default since torch 1.6): QoQ-Med's ECG `.pt` files (one tensor, e.g. bfloat16
//! `(8, 2500)`) and checkpoints such as ECG-JEPA's `{'encoder': state_dict, 'epoch': e}`.
//!
//! The archive holds `<archive>/data.pkl`, a pickle of the saved object, and one entry
//! `<archive>/data/<key>` per tensor storage. The pickle is run by a small virtual
//! machine covering what torch's pickler emits (dicts, `OrderedDict`s, lists, tuples,
//! scalars, `_rebuild_tensor_v2`, `_rebuild_parameter`); tensors are then read from their
//! storages honouring storage offset and strides, so saved views read right. Tensors of
//! types `float32`, `float64`, `float16`, `bfloat16`, `int64`, `int32`, `int16`, `int8`,
//! `uint8` and `bool` are supported; the legacy (pre-1.6) format, TorchScript archives,
//! compressed entries and quantized / sparse tensors are errors that say how to re-save.
//!
//! ```no_run
//! use qoq_data::torch_file::read_tensors;
//! for (name, t) in read_tensors("epoch100.pth".as_ref())? {
//!     // "encoder.W_P.weight" [256, 50] BF16 ...; the int 'epoch' is skipped.
//!     println!("{name} {:?} {:?} {}", t.shape, t.dtype, t.to_f32()[0]);
//! }
//! # Ok::<(), qoq_data::DataError>(())
//! ```

mod pickle;
mod zip;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{DataError, Result};
use pickle::{TensorRef, Value};
use zip::ZipArchive;

/// Element type of a saved tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            TorchDtype::F64 | TorchDtype::I64 => 8,
            TorchDtype::F32 | TorchDtype::I32 => 4,
            TorchDtype::F16 | TorchDtype::BF16 | TorchDtype::I16 => 2,
            TorchDtype::I8 | TorchDtype::U8 | TorchDtype::Bool => 1,
        }
    }

    /// torch's name, e.g. `torch.bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            TorchDtype::F32 => "torch.float32",
            TorchDtype::F64 => "torch.float64",
            TorchDtype::F16 => "torch.float16",
            TorchDtype::BF16 => "torch.bfloat16",
            TorchDtype::I64 => "torch.int64",
            TorchDtype::I32 => "torch.int32",
            TorchDtype::I16 => "torch.int16",
            TorchDtype::I8 => "torch.int8",
            TorchDtype::U8 => "torch.uint8",
            TorchDtype::Bool => "torch.bool",
        }
    }

    /// The dtype of a pickled storage class (`torch.FloatStorage`, ...).
    fn from_storage_class(class: &str) -> Option<Self> {
        Some(match class.strip_prefix("torch.")? {
            "FloatStorage" => TorchDtype::F32,
            "DoubleStorage" => TorchDtype::F64,
            "HalfStorage" => TorchDtype::F16,
            "BFloat16Storage" => TorchDtype::BF16,
            "LongStorage" => TorchDtype::I64,
            "IntStorage" => TorchDtype::I32,
            "ShortStorage" => TorchDtype::I16,
            "CharStorage" => TorchDtype::I8,
            "ByteStorage" => TorchDtype::U8,
            "BoolStorage" => TorchDtype::Bool,
            _ => return None,
        })
    }
}

/// A tensor read from the file: contiguous, row-major, little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub dtype: TorchDtype,
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl TorchTensor {
    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The element bytes, row-major, little-endian.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The values as f32, row-major (float64 and large integers round; bool is 0 / 1).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = &self.data;
        match self.dtype {
            TorchDtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            TorchDtype::F16 => b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            TorchDtype::BF16 => {
                b.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)).collect()
            }
            _ => self.to_f64().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// The values as f64, row-major (exact for every dtype but int64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        let b = &self.data;
        match self.dtype {
            TorchDtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(le8(c))).collect(),
            TorchDtype::F32 | TorchDtype::F16 | TorchDtype::BF16 => self.to_f32().into_iter().map(f64::from).collect(),
            _ => self.to_i64().unwrap_or_default().into_iter().map(|v| v as f64).collect(),
        }
    }

    /// The values as i64, row-major, for integer and bool tensors; `None` for floats.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let b = &self.data;
        Some(match self.dtype {
            TorchDtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(le8(c))).collect(),
            TorchDtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).into()).collect(),
            TorchDtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]).into()).collect(),
            TorchDtype::I8 => b.iter().map(|&v| i64::from(v as i8)).collect(),
            TorchDtype::U8 => b.iter().map(|&v| i64::from(v)).collect(),
            TorchDtype::Bool => b.iter().map(|&v| i64::from(v != 0)).collect(),
            TorchDtype::F32 | TorchDtype::F64 | TorchDtype::F16 | TorchDtype::BF16 => return None,
        })
    }
}

fn le8(c: &[u8]) -> [u8; 8] {
    [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]
}

/// IEEE half -> f32, exactly (subnormals, infinities and NaN payloads included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let (exp, mant) = (u32::from((h >> 10) & 0x1F), u32::from(h & 0x3FF));
    let magnitude = match exp {
        0 => (mant as f32 * (1.0 / 16_777_216.0)).to_bits(), // mant * 2^-24
        31 => 0x7F80_0000 | (mant << 13),
        _ => ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// The one-line Python that re-saves `path` in the current format.
fn resave_hint(path: &Path) -> String {
    let p = path.display();
    format!("re-save it with a recent torch.save: python -c \"import torch; torch.save(torch.load('{p}'), '{p}')\"")
}

/// Every tensor in the file: a bare tensor is named "", nested dicts join keys with "."
/// (`{'encoder': {'W_P.weight': t}}` -> `encoder.W_P.weight`); non-tensor values (ints
/// like 'epoch', strings, None) are skipped; lists and tuples index by position
/// (`{'a': [t]}` -> `a.0`). Tensors come in the order they were pickled.
///
/// Errors ([`DataError::Io`], [`DataError::Invalid`]) name the file and, for a bad
/// tensor, its name and storage key. A file holding a whole pickled `torch.nn` module,
/// or only objects the reader does not rebuild, is an error saying to save a state_dict.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, TorchTensor)>> {
    let invalid = |detail: String| DataError::invalid(path, detail);
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 2];
    let got = file.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    if got == 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return Err(invalid(format!(
            "written in torch's legacy serialization format (before torch 1.6, or with \
             _use_new_zipfile_serialization=False), which is not read here; {}",
            resave_hint(path)
        )));
    }
    let mut zip = ZipArchive::open(BufReader::new(file)).map_err(|e| {
        invalid(if got == 2 && magic == *b"PK" {
            format!("a damaged zip archive ({e}); copy the file again, or write it again with torch.save")
        } else {
            format!("not a file written by torch.save ({e}); if it is a tensor or state_dict, {}", resave_hint(path))
        })
    })?;
    let prefix = match zip.entries.iter().find_map(|e| e.name.strip_suffix("/data.pkl").filter(|p| !p.contains('/'))) {
        Some(p) => p.to_string(),
        None if zip.entries.iter().any(|e| e.name.ends_with("constants.pkl")) => {
            return Err(invalid(
                "a TorchScript archive (torch.jit.save), not torch.save; load it with torch.jit.load and \
                 torch.save its state_dict()"
                    .into(),
            ))
        }
        None => return Err(invalid("a zip archive without <archive>/data.pkl, so not written by torch.save".into())),
    };
    let big_endian = match zip.read(&format!("{prefix}/byteorder")) {
        Ok(order) => order.trim_ascii() == b"big",
        Err(_) => false, // absent before torch 2.1: little-endian
    };
    let pkl = zip.read(&format!("{prefix}/data.pkl")).map_err(|e| invalid(format!("{e}; {}", resave_hint(path))))?;
    let root = pickle::unpickle(&pkl).map_err(|e| invalid(format!("{prefix}/data.pkl: {e}; {}", resave_hint(path))))?;

    let (mut refs, mut objects) = (Vec::new(), Vec::new());
    flatten(root, String::new(), &mut refs, &mut objects);
    if let Some(module) = objects.iter().find(|c| c.starts_with("torch.nn.") || c.starts_with("__torch__.")) {
        return Err(invalid(format!(
            "holds a pickled `{module}` object, which this reader does not rebuild; save its weights instead: \
             torch.save(model.state_dict(), path)"
        )));
    }
    if refs.is_empty() && !objects.is_empty() {
        return Err(invalid(format!(
            "holds no tensors, only pickled objects ({}); save tensors or a state_dict with torch.save",
            objects.join(", ")
        )));
    }

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let shown = if name.is_empty() { "the tensor".to_string() } else { format!("tensor `{name}`") };
        let entry = format!("{prefix}/data/{}", t.storage.key);
        if !storages.contains_key(&t.storage.key) {
            let bytes = zip.read(&entry).map_err(|e| invalid(format!("{shown}: {e}")))?;
            storages.insert(t.storage.key.clone(), bytes);
        }
        let bytes = &storages[&t.storage.key];
        let tensor = gather(&t, bytes, big_endian).map_err(|e| invalid(format!("{shown} (storage `{entry}`): {e}")))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Collects the tensors under `v` with their dotted names, and the classes of the
/// objects skipped.
fn flatten(v: Value, name: String, out: &mut Vec<(String, TensorRef)>, objects: &mut Vec<String>) {
    let join = |key: &str| if name.is_empty() { key.to_string() } else { format!("{name}.{key}") };
    match v {
        Value::Tensor(t) => out.push((name, t)),
        Value::Dict(pairs) => {
            for (k, v) in pairs {
                flatten(v, join(&key_text(&k)), out, objects);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.into_iter().enumerate() {
                flatten(v, join(&i.to_string()), out, objects);
            }
        }
        Value::Object { class, items, elements } => {
            objects.push(class);
            for (k, v) in items {
                flatten(v, join(&key_text(&k)), out, objects);
            }
            for (i, v) in elements.into_iter().enumerate() {
                flatten(v, join(&i.to_string()), out, objects);
            }
        }
        _ => {}
    }
}

/// A dict key as a name component.
fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        Value::Float(f) => f.to_string(),
        Value::Tuple(items) => items.iter().map(key_text).collect::<Vec<_>>().join("."),
        _ => "?".into(),
    }
}

/// The elements of `t` from its storage `bytes`, contiguous and row-major.
fn gather(t: &TensorRef, bytes: &[u8], big_endian: bool) -> std::result::Result<TorchTensor, String> {
    let size = t.storage.dtype.size();
    let have = bytes.len() / size;
    if (have as u64) < t.storage.numel {
        return Err(format!("holds {have} elements, the pickle says {} (truncated or corrupt)", t.storage.numel));
    }
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| "dimension too large".to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("too many elements")?;
    // A stride-0 (expanded) view may hold more elements than its storage; bound those.
    if numel as u64 > t.storage.numel.max(1 << 28) {
        return Err(format!(
            "shape {:?} of {numel} elements over a storage of {}: too large",
            t.shape, t.storage.numel
        ));
    }
    let mut data = Vec::with_capacity(numel.saturating_mul(size));
    if numel > 0 {
        // The last element read, which must lie inside the storage.
        let last =
            t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?));
        if last.is_none_or(|l| l >= t.storage.numel) {
            return Err(format!(
                "offset {} with shape {:?} and strides {:?} reads past its {} elements",
                t.offset, t.shape, t.stride, t.storage.numel
            ));
        }
        let mut index = vec![0u64; shape.len()];
        let mut at = t.offset;
        for _ in 0..numel {
            let start = at as usize * size;
            data.extend_from_slice(&bytes[start..start + size]);
            // Advance the row-major index; `at` follows it through the strides.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                at += t.stride[d];
                if index[d] < t.shape[d] {
                    break;
                }
                at -= t.stride[d] * t.shape[d];
                index[d] = 0;
            }
        }
    }
    if big_endian && size > 1 {
        data.chunks_exact_mut(size).for_each(<[u8]>::reverse);
    }
    Ok(TorchTensor { dtype: t.storage.dtype, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pickle::StorageRef;

    fn tensor_ref(numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> TensorRef {
        TensorRef {
            storage: StorageRef { key: "0".into(), dtype: TorchDtype::I16, numel },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn gather_follows_offset_and_strides() {
        let bytes: Vec<u8> = (0i16..12).flat_map(|v| v.to_le_bytes()).collect();
        let values = |t: &TensorRef, be: bool| gather(t, &bytes, be).unwrap().to_i64().unwrap();
        // (3, 4) transposed -> (4, 3) with strides (1, 4).
        assert_eq!(values(&tensor_ref(12, 0, &[4, 3], &[1, 4]), false), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // Rows 1.., every other column from 1: offset 5, strides (4, 2).
        assert_eq!(values(&tensor_ref(12, 5, &[2, 2], &[4, 2]), false), [5, 7, 9, 11]);
        // A 0-d tensor and a broadcast (stride 0) one.
        assert_eq!(values(&tensor_ref(12, 3, &[], &[]), false), [3]);
        assert_eq!(values(&tensor_ref(12, 2, &[3], &[0]), false), [2, 2, 2]);
        assert_eq!(values(&tensor_ref(12, 1, &[1], &[1]), true), [256]);
        assert!(gather(&tensor_ref(12, 0, &[0, 5], &[5, 1]), &bytes, false).unwrap().to_i64().unwrap().is_empty());
        let err = gather(&tensor_ref(12, 1, &[3, 4], &[4, 1]), &bytes, false).unwrap_err();
        assert!(err.contains("reads past"), "{err}");
        assert!(gather(&tensor_ref(13, 0, &[13], &[1]), &bytes, false).unwrap_err().contains("truncated"));
    }

    #[test]
    fn half_precision_conversions() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
        assert!(f16_to_f32(0x7E00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }
}
