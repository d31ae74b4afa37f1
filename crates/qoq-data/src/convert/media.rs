//! Reading the media a JSONL row points at: images, videos given as directories of frames,
//! time series (`.npy`, `.csv`, `torch.save` `.pt` / `.pth`, WFDB records) and
//! segmentation masks. Paths are relative to a media
//! root. Every failure is a reason naming the file and, where the fix is a conversion,
//! saying how to do it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::ImageFormat;

use super::fields::Reason;
use super::wfdb;
use crate::preprocess::sample_frame_indices;
use crate::sample::Signal;
use crate::torch_file::{self, TorchDtype};
use crate::validate::image_size;

/// Extensions of container video files (frames must be extracted first).
const VIDEO_EXTENSIONS: [&str; 8] = ["mp4", "avi", "mov", "mkv", "webm", "mpg", "mpeg", "m4v"];
/// Extensions of 3-D volume files (slices must be exported first).
const VOLUME_EXTENSIONS: [&str; 5] = ["nii.gz", "nii", "nrrd", "mha", "mhd"];
/// Frame files read from a video directory.
const FRAME_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The lowercased extension of `path`, with `.nii.gz` as one extension.
fn extension(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if name.ends_with(".nii.gz") {
        return "nii.gz".into();
    }
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// `path` without its extension (`a/b.nii.gz` -> `a/b`).
fn without_extension(path: &Path) -> PathBuf {
    let ext = extension(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if ext.is_empty() || name.len() <= ext.len() + 1 {
        return path.to_path_buf();
    }
    path.with_file_name(&name[..name.len() - ext.len() - 1])
}

fn read_file(path: &Path) -> Result<Vec<u8>, Reason> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("`{}` not found", path.display()),
        _ => format!("`{}`: {e}", path.display()),
    })
}

/// Checks that `bytes` are a PNG or JPEG image whose header reads.
fn check_png_or_jpeg(bytes: &[u8]) -> Result<(), Reason> {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Png | ImageFormat::Jpeg) => image_size(bytes, false).map(|_| ()),
        Ok(other) => Err(format!("{other:?} images are not supported; convert it to PNG or JPEG")),
        Err(_) => Err("not a PNG or JPEG image".into()),
    }
}

/// The encoded bytes of the image at `root/rel`, which must be a PNG or JPEG.
pub(super) fn read_image(root: &Path, rel: &str) -> Result<Vec<u8>, Reason> {
    let path = root.join(rel);
    if path.is_dir() {
        return Err(format!(
            "`{}` is a directory, not an image; a directory of frames belongs under `videos`",
            path.display()
        ));
    }
    let ext = extension(&path);
    if VIDEO_EXTENSIONS.contains(&ext.as_str()) || VOLUME_EXTENSIONS.contains(&ext.as_str()) {
        return Err(format!(
            "`{}` is a video or volume file, not an image; extract its frames into a directory \
             (e.g. `ffmpeg -i {} {}/%05d.png`) and list that under `videos`",
            path.display(),
            path.display(),
            without_extension(&path).display()
        ));
    }
    let bytes = read_file(&path)?;
    check_png_or_jpeg(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))?;
    Ok(bytes)
}

/// Up to `frames` frames of the video at `root/rel`, sampled uniformly.
///
/// A video is a directory of `.png` / `.jpg` frames, read in file-name order. For a video
/// file `X.mp4` (or a volume `X.nii.gz`) the directory `X/` next to it is read when it
/// exists, so the JSONL files need not be rewritten after extracting frames; otherwise
/// the file is an error that says how to extract them.
pub(super) fn read_video(root: &Path, rel: &str, frames: usize) -> Result<Vec<Vec<u8>>, Reason> {
    let path = root.join(rel);
    let dir = if path.is_dir() {
        path.clone()
    } else {
        let sibling = without_extension(&path);
        if sibling != path && sibling.is_dir() {
            sibling
        } else if path.is_file() {
            return Err(video_file_hint(&path, &sibling));
        } else {
            return Err(format!("`{}` not found (a video is a directory of .png/.jpg frames)", path.display()));
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("`{}`: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && FRAME_EXTENSIONS.contains(&extension(p).as_str()))
        .collect();
    if files.is_empty() {
        return Err(format!("video directory `{}` holds no .png or .jpg frames", dir.display()));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    sample_frame_indices(files.len(), frames.min(files.len()))
        .into_iter()
        .map(|i| {
            let bytes = read_file(&files[i])?;
            check_png_or_jpeg(&bytes).map_err(|e| format!("`{}`: {e}", files[i].display()))?;
            Ok(bytes)
        })
        .collect()
}

fn video_file_hint(path: &Path, dir: &Path) -> Reason {
    let ext = extension(path);
    if VOLUME_EXTENSIONS.contains(&ext.as_str()) {
        format!(
            "`{}` is a 3-D volume file; export its slices as PNG files into the directory `{}` \
             (e.g. with nibabel), which the converter then reads, or list a frame directory under `videos`",
            path.display(),
            dir.display()
        )
    } else {
        let dir = if dir == path { PathBuf::from(format!("{}_frames", path.display())) } else { dir.to_path_buf() };
        format!(
            "`{}` is a video file; extract its frames first, e.g. `ffmpeg -i {} {}/%05d.png` \
             (the converter then reads that directory), or give the frame directory instead",
            path.display(),
            path.display(),
            dir.display()
        )
    }
}

/// The mask at `root/rel` as PNG bytes: a PNG is kept as is, a JPEG is decoded to grey
/// and re-encoded as PNG.
pub(super) fn read_mask(root: &Path, rel: &str) -> Result<Vec<u8>, Reason> {
    let path = root.join(rel);
    let bytes = read_file(&path)?;
    check_png_or_jpeg(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))?;
    if image::guess_format(&bytes).ok() == Some(ImageFormat::Png) {
        return Ok(bytes);
    }
    let grey = image::load_from_memory(&bytes).map_err(|e| format!("`{}`: {e}", path.display()))?.into_luma8();
    let mut png = Vec::new();
    grey.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| format!("`{}`: re-encoding as PNG: {e}", path.display()))?;
    Ok(png)
}

/// The time series at `root/rel`:
///
/// - `.npy` (float32/float64, shape `(samples,)` or `(leads, samples)`);
/// - `.csv` (rows = samples, columns = leads, optional header);
/// - `.pt` / `.pth` written by `torch.save` (one bare tensor of any real dtype, shape
///   `(samples,)` or `(leads, samples)`); when it cannot be read, an `X.npy` next to it
///   (made under earlier converters' advice) is used if present;
/// - a WFDB record: `X.hea`, `X.dat` with `X.hea` beside it, or the record name `X` when
///   `X.hea` exists (formats 16 and 212, see [`super::wfdb`]). The header's sampling
///   frequency overrides `sampling_rate_hz` (the row's `sampling_rate`).
///
/// For a `.mat` file, a `.npy` of the same name next to it is used if present; otherwise
/// the error says how to make it.
pub(super) fn read_time_series(root: &Path, rel: &str, sampling_rate_hz: f32) -> Result<Signal, Reason> {
    let path = root.join(rel);
    if let Some(header) = wfdb::header_path(&path)? {
        return wfdb::read_record(&header);
    }
    let at = |p: &Path, e: Reason| format!("`{}`: {e}", p.display());
    let npy = path.with_extension("npy");
    let (leads, samples, values) = match extension(&path).as_str() {
        "npy" => parse_npy(&read_file(&path)?).map_err(|e| at(&path, e))?,
        "csv" => {
            let bytes = read_file(&path)?;
            let text = std::str::from_utf8(&bytes).map_err(|e| at(&path, format!("not UTF-8 text: {e}")))?;
            parse_csv(text).map_err(|e| at(&path, e))?
        }
        "pt" | "pth" => match read_torch(&path) {
            Ok(signal) => signal,
            Err(_) if npy.is_file() => parse_npy(&read_file(&npy)?).map_err(|e| at(&npy, e))?,
            Err(e) => return Err(e),
        },
        "mat" if npy.is_file() => parse_npy(&read_file(&npy)?).map_err(|e| at(&npy, e))?,
        "mat" => return Err(convert_to_npy_hint(&path, &npy)),
        other => {
            return Err(at(
                &path,
                format!("unsupported time-series format `.{other}`; use .npy, .csv, .pt / .pth or a WFDB .hea record"),
            ))
        }
    };
    let too_big = |n: usize| u32::try_from(n).map_err(|_| format!("`{}`: {n} is too large", path.display()));
    Ok(Signal { leads: too_big(leads)?, samples: too_big(samples)?, sampling_rate_hz, values })
}

/// Leads, samples and lead-major values of the one tensor a `torch.save` file holds.
fn read_torch(path: &Path) -> Result<(usize, usize, Vec<f32>), Reason> {
    let tensors = torch_file::read_tensors(path).map_err(|e| e.to_string())?;
    let p = path.display();
    let tensor = match tensors.as_slice() {
        [(name, t)] if name.is_empty() => t,
        [] => return Err(format!("`{p}` holds no tensor; save the ECG as one tensor: torch.save(ecg, path)")),
        many => {
            let mut listed: Vec<String> = many.iter().take(5).map(|(n, t)| format!("`{n}` {:?}", t.shape)).collect();
            if many.len() > 5 {
                listed.push(format!("... ({} in all)", many.len()));
            }
            return Err(format!(
                "`{p}` holds a container of tensors ({}), not one tensor; save the ECG alone as a \
                 (leads, samples) tensor: torch.save(ecg, path)",
                listed.join(", ")
            ));
        }
    };
    if tensor.dtype == TorchDtype::Bool {
        return Err(format!("`{p}`: the tensor is torch.bool; save the ECG as float32 (`x.float()`)"));
    }
    let (leads, samples) = match tensor.shape[..] {
        [n] => (1, n),
        [l, n] => (l, n),
        _ => {
            return Err(format!(
                "`{p}`: the tensor has shape {:?}; expected (samples,) or (leads, samples)",
                tensor.shape
            ))
        }
    };
    if leads == 0 || samples == 0 {
        return Err(format!("`{p}`: the tensor of shape {:?} is empty", tensor.shape));
    }
    if leads > 64 && samples < leads {
        return Err(format!(
            "`{p}`: the tensor has shape ({leads}, {samples}), which looks like (samples, leads); save it transposed \
             (`torch.save(x.T.contiguous(), path)`) as (leads, samples)"
        ));
    }
    Ok((leads, samples, tensor.to_f32()))
}

fn convert_to_npy_hint(path: &Path, npy: &Path) -> Reason {
    let (p, n) = (path.display(), npy.display());
    let load =
        format!("import scipy.io, numpy as np; np.save('{n}', scipy.io.loadmat('{p}')['val'].astype('float32'))");
    format!(
        "`{p}`: .mat time series cannot be read here; convert it to `{n}` (shape (leads, samples), \
         float32), which the converter then picks up: python -c \"{load}\""
    )
}

/// Leads, samples and lead-major values of a `.npy` file (format versions 1-3; dtype
/// `<f4` or `<f8`; C or Fortran order; 1-D = one lead, 2-D = `(leads, samples)`).
pub(super) fn parse_npy(bytes: &[u8]) -> Result<(usize, usize, Vec<f32>), Reason> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not a .npy file (no \\x93NUMPY magic); save it with numpy.save".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated .npy header")?;
    let header = String::from_utf8_lossy(header);
    let descr = header_value(&header, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or("the .npy header has no `descr`")?;
    let fortran = match header_value(&header, "fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err("the .npy header has no `fortran_order`".into()),
    };
    let shape: Vec<usize> = header_value(&header, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or("the .npy header has no `shape`")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad .npy shape entry `{s}`")))
        .collect::<Result<_, _>>()?;
    let (leads, samples) = match shape[..] {
        [n] => (1, n),
        [l, n] => (l, n),
        _ => return Err(format!("array has shape {shape:?}; expected (samples,) or (leads, samples)")),
    };
    if leads == 0 || samples == 0 {
        return Err(format!("array of shape {shape:?} is empty"));
    }
    if leads > 64 && samples < leads {
        return Err(format!(
            "array has shape ({leads}, {samples}), which looks like (samples, leads); save it transposed \
             (`np.save(path, arr.T)`) as (leads, samples)"
        ));
    }
    let count = leads.checked_mul(samples).ok_or("array is too large")?;
    let data = &bytes[start + header_len..];
    let item = match descr {
        "<f4" => 4,
        "<f8" => 8,
        ">f4" | ">f8" => return Err(format!("dtype `{descr}` is big-endian; save it as `arr.astype('<f4')`")),
        other => return Err(format!("dtype `{other}` is not supported; save it as float32 (`arr.astype('float32')`)")),
    };
    let needed = count.checked_mul(item).ok_or("array is too large")?;
    if data.len() != needed {
        return Err(format!(
            "shape {shape:?} of `{descr}` needs {needed} data bytes, the file holds {}: truncated or corrupt",
            data.len()
        ));
    }
    let flat: Vec<f32> = if item == 4 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect()
    };
    let values = if fortran && leads > 1 {
        // Column-major: element (lead, t) is at t * leads + lead.
        (0..leads).flat_map(|l| (0..samples).map(move |t| (l, t))).map(|(l, t)| flat[t * leads + l]).collect()
    } else {
        flat
    };
    Ok((leads, samples, values))
}

/// The text after `'key':` in a .npy header dict, leading spaces removed.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    [format!("'{key}'"), format!("\"{key}\"")].iter().find_map(|quoted| {
        let at = header.find(quoted.as_str())?;
        let rest = header[at + quoted.len()..].trim_start().strip_prefix(':')?;
        Some(rest.trim_start())
    })
}

/// Leads, samples and lead-major values of a CSV time series: one row per sample, one
/// column per lead, separated by `,` `;` or tabs; a first line that is not numeric is a
/// header.
pub(super) fn parse_csv(text: &str) -> Result<(usize, usize, Vec<f32>), Reason> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut separator = None;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let sep =
            *separator.get_or_insert_with(|| [',', ';', '\t'].into_iter().find(|c| line.contains(*c)).unwrap_or(','));
        let parsed: Result<Vec<f32>, String> = line
            .split(sep)
            .map(|f| f.trim().parse::<f32>().map_err(|_| format!("line {}: `{}` is not a number", i + 1, f.trim())))
            .collect();
        let is_header = first;
        first = false;
        let values = match parsed {
            Ok(v) => v,
            Err(_) if is_header => continue,
            Err(e) => return Err(e),
        };
        if let Some(width) = rows.first().map(Vec::len) {
            if values.len() != width {
                return Err(format!("line {} has {} columns, the first data line has {width}", i + 1, values.len()));
            }
        }
        rows.push(values);
    }
    let samples = rows.len();
    let leads = rows.first().map_or(0, Vec::len);
    if samples == 0 || leads == 0 {
        return Err("no numeric rows".into());
    }
    let values = (0..leads).flat_map(|l| rows.iter().map(move |r| r[l])).collect();
    Ok((leads, samples, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .npy file as numpy writes it (version 1, header padded to 64 bytes).
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn npy_c_and_fortran_order() {
        let c = npy("<f4", false, "(2, 3)", &f32_bytes(&[1., 2., 3., 4., 5., 6.]));
        assert_eq!(parse_npy(&c).unwrap(), (2, 3, vec![1., 2., 3., 4., 5., 6.]));
        // The same 2x3 array in column-major order.
        let f = npy("<f4", true, "(2, 3)", &f32_bytes(&[1., 4., 2., 5., 3., 6.]));
        assert_eq!(parse_npy(&f).unwrap(), (2, 3, vec![1., 2., 3., 4., 5., 6.]));
        let d: Vec<u8> = [0.5f64, -1.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(parse_npy(&npy("<f8", false, "(2,)", &d)).unwrap(), (1, 2, vec![0.5, -1.25]));
    }

    #[test]
    fn npy_errors_say_what_is_wrong() {
        assert!(parse_npy(b"PK\x03\x04 zip").unwrap_err().contains("not a .npy"));
        let short = npy("<f4", false, "(2, 3)", &f32_bytes(&[1., 2.]));
        assert!(parse_npy(&short).unwrap_err().contains("truncated"));
        assert!(parse_npy(&npy("<i8", false, "(1,)", &[0; 8])).unwrap_err().contains("float32"));
        assert!(parse_npy(&npy(">f4", false, "(1,)", &[0; 4])).unwrap_err().contains("big-endian"));
        assert!(parse_npy(&npy("<f4", false, "(1, 2, 2)", &[0; 16])).unwrap_err().contains("(leads, samples)"));
        assert!(parse_npy(&npy("<f4", false, "(100, 2)", &[0; 800])).unwrap_err().contains("transposed"));
    }

    #[test]
    fn csv_with_and_without_header() {
        assert_eq!(parse_csv("I,II\n1,10\n2,20\n3,30\n").unwrap(), (2, 3, vec![1., 2., 3., 10., 20., 30.]));
        assert_eq!(parse_csv("1.5\n\n2.5\n").unwrap(), (1, 2, vec![1.5, 2.5]));
        assert_eq!(parse_csv("1\t2\n3\t4").unwrap(), (2, 2, vec![1., 3., 2., 4.]));
        assert!(parse_csv("a,b\n1,2\n3\n").unwrap_err().contains("line 3 has 1 columns"));
        assert!(parse_csv("1,2\n3,x\n").unwrap_err().contains("line 2: `x` is not a number"));
        assert!(parse_csv("a,b\n").unwrap_err().contains("no numeric rows"));
    }

    #[test]
    fn extensions_and_frame_directories() {
        assert_eq!(extension(Path::new("a/b.NII.GZ")), "nii.gz");
        assert_eq!(without_extension(Path::new("v/x.nii.gz")), PathBuf::from("v/x"));
        assert_eq!(without_extension(Path::new("v/x.mp4")), PathBuf::from("v/x"));
        assert_eq!(without_extension(Path::new("v/x")), PathBuf::from("v/x"));
    }

    fn torch_fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torch_file").join(name)
    }

    #[test]
    fn torch_files_hold_one_ecg_tensor() {
        let root = torch_fixture("");
        let sig = read_time_series(&root, "ecg_bf16.pt", 250.0).unwrap();
        assert_eq!((sig.leads, sig.samples, sig.sampling_rate_hz), (8, 2500, 250.0));
        assert_eq!(sig.values[2499], ((2499 % 256) as f32 - 128.0) * 0.25);
        let sig = read_time_series(&root, "f64.pt", 100.0).unwrap();
        assert_eq!((sig.leads, sig.samples, sig.values[0]), (3, 4, (-5.5f64 / 3.0) as f32));
        let err = read_time_series(&root, "jepa_epoch100.pth", 250.0).unwrap_err();
        assert!(err.contains("container of tensors") && err.contains("`encoder.W_P.weight` [3, 2]"), "{err}");
        let err = read_time_series(&root, "samples_by_leads.pt", 250.0).unwrap_err();
        assert!(err.contains("(100, 2)") && err.contains("transposed"), "{err}");
        let err = read_time_series(&root, "legacy.pt", 250.0).unwrap_err();
        assert!(err.contains("legacy") && err.contains("torch.save"), "{err}");
        let err = read_time_series(&root, "dtypes.pt", 250.0).unwrap_err();
        assert!(err.contains("container") && err.contains("`f16` [4]"), "{err}");
    }

    #[test]
    fn wfdb_records_and_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.dat"), [4u8, 0, 8, 0]).unwrap();
        std::fs::write(dir.path().join("r.hea"), "r 1 500 2\nr.dat 16 4(0)/mV\n").unwrap();
        for rel in ["r", "r.hea", "r.dat"] {
            // The header's 500 Hz wins over the row's 250 Hz.
            let sig = read_time_series(dir.path(), rel, 250.0).unwrap();
            assert_eq!(
                (sig.leads, sig.samples, sig.sampling_rate_hz, sig.values.clone()),
                (1, 2, 500.0, vec![1.0, 2.0])
            );
        }
        let err = read_time_series(dir.path(), "r.edf", 250.0).unwrap_err();
        assert!(err.contains(".edf") && err.contains(".pt / .pth") && err.contains("WFDB"), "{err}");
        std::fs::write(dir.path().join("x.mat"), b"MATLAB").unwrap();
        assert!(read_time_series(dir.path(), "x.mat", 250.0).unwrap_err().contains("scipy.io.loadmat"));
    }
}
