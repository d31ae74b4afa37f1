//! Parity with transformers' Qwen3-VL image processor on committed fixtures
//! (tools/make_preprocess_fixtures.py): grid_thw equal, pixel_values within 1e-6; and of
//! the ECG preprocessing with ECG-JEPA's convention computed by scipy / numpy
//! (tools/make_ecg_preprocess_fixtures.py): within 2e-5.

use std::io::Read;
use std::path::PathBuf;

use qoq_data::preprocess::{decode_rgb, preprocess_ecg, ImageProcessor, ImageProcessorConfig};
use qoq_data::Signal;

fn read_f32_gz(path: PathBuf) -> Vec<f32> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length");
    a.iter().zip(b).enumerate().fold((0f32, 0), |(m, at), (i, (x, y))| {
        let d = (x - y).abs();
        if d > m {
            (d, i)
        } else {
            (m, at)
        }
    })
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/preprocess")
}

#[test]
fn pixel_values_match_transformers() {
    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let cfg = ImageProcessorConfig {
            min_pixels: case["min_pixels"].as_u64().unwrap(),
            max_pixels: case["max_pixels"].as_u64().unwrap(),
            ..Default::default()
        };
        let proc = ImageProcessor::new(cfg).unwrap();
        let img = decode_rgb(&std::fs::read(dir.join("images").join(name)).unwrap()).unwrap();
        let out = proc.preprocess_image(&img).unwrap();

        let grid: Vec<u32> = case["grid_thw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(out.grid_thw.to_vec(), grid, "{name}: grid_thw");

        let expected = read_f32_gz(dir.join(case["pixel_values"].as_str().unwrap()));
        let (max_diff, worst) = max_abs_diff(&out.pixel_values, &expected);
        assert!(
            max_diff <= 1e-6,
            "{name} [{}, {}]: max |diff| {max_diff} at value {worst} (row {}, col {})",
            case["min_pixels"],
            case["max_pixels"],
            worst / 1536,
            worst % 1536
        );
    }
}

#[test]
fn video_pixel_values_match_transformers() {
    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["video_cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let proc = ImageProcessor::default();
    for case in cases {
        let name = case["video"].as_str().unwrap();
        let n = case["frames"].as_u64().unwrap() as usize;
        let frames: Vec<_> = (0..n)
            .map(|i| {
                decode_rgb(&std::fs::read(dir.join("videos").join(name).join(format!("{i:05}.png"))).unwrap()).unwrap()
            })
            .collect();
        let refs: Vec<_> = frames.iter().collect();
        let out = proc.preprocess_video(&refs).unwrap();
        let grid: Vec<u32> = case["grid_thw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(out.grid_thw.to_vec(), grid, "{name}: grid_thw");
        let expected = read_f32_gz(dir.join(case["pixel_values"].as_str().unwrap()));
        let (diff, at) = max_abs_diff(&out.pixel_values, &expected);
        assert!(diff <= 1e-6, "{name}: max |diff| {diff} at row {}, col {}", at / 1536, at % 1536);
    }
}

/// Qwen2.5-VL's processor (patch 14, factor 28, CLIP mean/std) against transformers 5.24's
/// `Qwen2VLImageProcessor` configured from its preprocessor_config.json
/// (tests/fixtures/qwen2_5_vl/processor, tools/make_qwen25vl_fixtures.py).
#[test]
fn qwen2_5_vl_pixel_values_match_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2_5_vl/processor");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    let images = fixtures().join("images");
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let cfg = ImageProcessorConfig {
            min_pixels: case["min_pixels"].as_u64().unwrap(),
            max_pixels: case["max_pixels"].as_u64().unwrap(),
            ..ImageProcessorConfig::qwen2_5_vl()
        };
        let proc = ImageProcessor::new(cfg).unwrap();
        let img = decode_rgb(&std::fs::read(images.join(name)).unwrap()).unwrap();
        let out = proc.preprocess_image(&img).unwrap();
        let grid: Vec<u32> = case["grid_thw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(out.grid_thw.to_vec(), grid, "{name}: grid_thw");
        let hw: Vec<u32> = case["resized_hw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!([out.resized_size.1, out.resized_size.0].to_vec(), hw, "{name}: resized (h, w)");
        let expected = read_f32_gz(dir.join(case["pixel_values"].as_str().unwrap()));
        assert_eq!(expected.len(), out.rows() * 1176, "{name}: rows of 1176 values");
        let (diff, at) = max_abs_diff(&out.pixel_values, &expected);
        assert!(diff <= 1e-6, "{name}: max |diff| {diff} at row {}, col {}", at / 1176, at % 1176);
    }
}

/// A checkpoint's preprocessor_config.json over the family's defaults.
#[test]
fn qwen2_5_vl_config_reads_over_its_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/qwen2_5_vl/tiny-untied/preprocessor_config.json");
    let c = ImageProcessorConfig::from_json_file_over(&path, ImageProcessorConfig::qwen2_5_vl()).unwrap();
    assert_eq!((c.patch_size, c.merge_size, c.min_pixels, c.max_pixels), (14, 2, 3136, 50176));
    assert_eq!(c.image_mean, ImageProcessorConfig::qwen2_5_vl().image_mean);
    assert_eq!(c.patch_dim(), 1176);
}

#[test]
fn ecg_preprocessing_matches_scipy_resample_and_the_unbiased_z_score() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ecg_preprocess");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for case in meta["cases"].as_array().unwrap() {
        let values = read_f32_gz(dir.join(case["input"].as_str().unwrap()));
        let signal = Signal {
            leads: case["leads"].as_u64().unwrap() as u32,
            samples: case["samples"].as_u64().unwrap() as u32,
            sampling_rate_hz: case["rate_hz"].as_f64().unwrap() as f32,
            values,
        };
        let got = preprocess_ecg(&signal).unwrap();
        let want = read_f32_gz(dir.join(case["expected"].as_str().unwrap()));
        let (d, at) = max_abs_diff(&got, &want);
        assert!(d < 2e-5, "{}: differs by {d:e} at lead {}, sample {}", case["what"], at / 2500, at % 2500);
    }
}
