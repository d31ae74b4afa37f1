//! The torch.save reader on files torch 2.11 wrote (tools/make_torch_file_fixtures.py;
//! the values are recomputed here from the script's formulas): dtype, shape and every
//! value exact, plus the error paths.

use std::path::{Path, PathBuf};

use qoq_data::torch_file::{read_tensors, TorchDtype, TorchTensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torch_file").join(name)
}

/// The file's only tensor, which must be bare (named "").
fn single(name: &str) -> TorchTensor {
    let mut tensors = read_tensors(&fixture(name)).unwrap();
    assert_eq!(tensors.len(), 1, "{name}");
    let (key, t) = tensors.remove(0);
    assert_eq!(key, "", "{name}");
    t
}

fn arange(n: usize) -> Vec<f64> {
    (0..n).map(|i| i as f64).collect()
}

fn by_name(tensors: &[(String, TorchTensor)]) -> Vec<(&str, TorchDtype, Vec<usize>)> {
    tensors.iter().map(|(n, t)| (n.as_str(), t.dtype, t.shape.clone())).collect()
}

#[test]
fn ecg_float32_and_bfloat16() {
    let t = single("ecg_f32.pt");
    assert_eq!((t.dtype, t.shape.as_slice(), t.numel()), (TorchDtype::F32, &[8, 2500][..], 20000));
    let expected: Vec<f32> = (0..20000).map(|i| i as f32 * 0.5).collect();
    assert_eq!(t.to_f32(), expected);
    assert_eq!(t.to_i64(), None);

    let t = single("ecg_bf16.pt");
    assert_eq!((t.dtype, t.shape.as_slice()), (TorchDtype::BF16, &[8, 2500][..]));
    let expected: Vec<f32> = (0..20000).map(|i| ((i % 256) as f32 - 128.0) * 0.25).collect();
    assert_eq!(t.to_f32(), expected);
    assert_eq!(t.bytes().len(), 40000);
}

#[test]
fn float64_and_int64() {
    let t = single("f64.pt");
    assert_eq!((t.dtype, t.shape.as_slice()), (TorchDtype::F64, &[3, 4][..]));
    assert_eq!(t.to_f64(), arange(12).iter().map(|i| (i - 5.5) / 3.0).collect::<Vec<_>>());
    let t = single("i64.pt");
    assert_eq!((t.dtype, t.shape.as_slice()), (TorchDtype::I64, &[2, 6][..]));
    assert_eq!(t.to_i64().unwrap(), (0..12i64).map(|i| (i - 5) * 1_000_000_007).collect::<Vec<_>>());
}

#[test]
fn non_contiguous_views_read_in_row_major_order() {
    // x = arange(24).reshape(4, 6).
    let x = |r: usize, c: usize| (r * 6 + c) as f32;
    let t = single("transposed.pt");
    assert_eq!(t.shape, [6, 4]);
    assert_eq!(t.to_f32(), (0..6).flat_map(|r| (0..4).map(move |c| x(c, r))).collect::<Vec<_>>());
    let t = single("sliced.pt");
    assert_eq!(t.shape, [3, 3]);
    assert_eq!(t.to_f32(), (1..4).flat_map(|r| [1, 3, 5].map(|c| x(r, c))).collect::<Vec<_>>());
}

#[test]
fn tensors_sharing_a_storage() {
    let t = read_tensors(&fixture("shared.pt")).unwrap();
    assert_eq!(by_name(&t), [("a", TorchDtype::F32, vec![4, 6]), ("b", TorchDtype::F32, vec![6])]);
    assert_eq!(t[0].1.to_f32(), arange(24).iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(t[1].1.to_f32(), [12., 13., 14., 15., 16., 17.]);
}

#[test]
fn ecg_jepa_release_checkpoint() {
    let t = read_tensors(&fixture("jepa_epoch100.pth")).unwrap();
    assert_eq!(
        by_name(&t),
        [
            ("encoder.W_P.weight", TorchDtype::F32, vec![3, 2]),
            ("encoder.W_P.bias", TorchDtype::F32, vec![3]),
            ("encoder.blocks.0.norm1.weight", TorchDtype::F32, vec![3]),
        ]
    );
    assert_eq!(t[0].1.to_f32(), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    assert_eq!(t[1].1.to_f32(), [-1.0, 0.0, 1.0]);
    assert_eq!(t[2].1.to_f32(), [1.0; 3]);
}

#[test]
fn module_state_dict_and_parameters() {
    let weight: Vec<f32> = (0..6).map(|i| i as f32 * 0.125 - 0.25).collect();
    let t = read_tensors(&fixture("module_state.pt")).unwrap();
    assert_eq!(
        by_name(&t),
        [
            ("0.weight", TorchDtype::F32, vec![2, 3]),
            ("0.bias", TorchDtype::F32, vec![2]),
            ("1.weight", TorchDtype::F32, vec![2]),
            ("1.bias", TorchDtype::F32, vec![2]),
            ("1.running_mean", TorchDtype::F32, vec![2]),
            ("1.running_var", TorchDtype::F32, vec![2]),
            ("1.num_batches_tracked", TorchDtype::I64, vec![]),
        ]
    );
    let values: Vec<Vec<f64>> = t.iter().map(|(_, t)| t.to_f64()).collect();
    assert_eq!(values[0], weight.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
    assert_eq!(values[1..], [vec![0.5, -0.5], vec![1.0; 2], vec![0.0; 2], vec![0.0; 2], vec![1.0; 2], vec![0.0]]);
    assert_eq!(t[6].1.to_i64(), Some(vec![0]));

    // The Parameters themselves (torch._utils._rebuild_parameter).
    let p = read_tensors(&fixture("parameters.pt")).unwrap();
    let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    assert_eq!(p[0].1, t[0].1);
    assert_eq!(p[3].1, t[3].1);
}

#[test]
fn every_other_dtype_scalars_and_empty_tensors() {
    let t = read_tensors(&fixture("dtypes.pt")).unwrap();
    assert_eq!(
        by_name(&t),
        [
            ("f16", TorchDtype::F16, vec![4]),
            ("i32", TorchDtype::I32, vec![3]),
            ("i16", TorchDtype::I16, vec![3]),
            ("i8", TorchDtype::I8, vec![3]),
            ("u8", TorchDtype::U8, vec![3]),
            ("bool", TorchDtype::Bool, vec![3]),
            ("scalar", TorchDtype::F64, vec![]),
            ("empty", TorchDtype::F32, vec![0, 3]),
        ]
    );
    assert_eq!(t[0].1.to_f32(), [0.5, -2.0, 65504.0, 1.0 / 1024.0]);
    assert_eq!(t[1].1.to_i64().unwrap(), [-2147483648, 2147483647, 7]);
    assert_eq!(t[2].1.to_i64().unwrap(), [-32768, 32767, -3]);
    assert_eq!(t[3].1.to_i64().unwrap(), [-128, 127, -1]);
    assert_eq!(t[4].1.to_i64().unwrap(), [0, 255, 9]);
    assert_eq!(t[5].1.to_i64().unwrap(), [1, 0, 1]);
    assert_eq!(t[5].1.to_f32(), [1.0, 0.0, 1.0]);
    assert_eq!((t[6].1.to_f64(), t[6].1.numel()), (vec![2.5], 1));
    assert!(t[7].1.to_f32().is_empty());
}

#[test]
fn nested_containers_index_lists_and_skip_other_values() {
    let t = read_tensors(&fixture("nested.pt")).unwrap();
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["list.0", "list.1.inner", "tuple.0"]);
    assert_eq!(t[0].1.to_f32(), [0.0, 1.0]);
    assert_eq!(t[1].1.to_f32(), [10.0, 11.0, 12.0]);
    assert_eq!(t[2].1.to_f32(), [-1.0]);
}

fn error(path: &Path) -> String {
    read_tensors(path).unwrap_err().to_string()
}

#[test]
fn legacy_format_says_how_to_re_save() {
    let path = fixture("legacy.pt");
    let err = error(&path);
    assert!(err.contains("legacy.pt") && err.contains("legacy"), "{err}");
    assert!(err.contains("torch.save(torch.load("), "{err}");
}

#[test]
fn truncated_corrupt_and_foreign_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("ecg_f32.pt")).unwrap();
    for cut in [0, 1, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = tmp.path().join(format!("cut{cut}.pt"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = error(&path);
        assert!(err.contains(&format!("cut{cut}.pt")) && err.contains("torch.save"), "{cut}: {err}");
        if cut > 2 {
            assert!(err.contains("truncated"), "{cut}: {err}");
        }
    }
    // A flipped byte inside the tensor data fails the entry's CRC and names the tensor.
    let mut corrupt = bytes.clone();
    let at = bytes.len() / 2;
    corrupt[at] ^= 0x40;
    let path = tmp.path().join("corrupt.pt");
    std::fs::write(&path, &corrupt).unwrap();
    let err = error(&path);
    assert!(err.contains("corrupt.pt") && err.contains("CRC-32") && err.contains("data/0"), "{err}");

    let path = tmp.path().join("notes.pt");
    std::fs::write(&path, "just some text, not a tensor\n").unwrap();
    let err = error(&path);
    assert!(err.contains("notes.pt") && err.contains("not a file written by torch.save"), "{err}");
    let err = error(&tmp.path().join("missing.pt"));
    assert!(err.contains("missing.pt"), "{err}");
}
