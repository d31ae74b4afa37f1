//! Parity with transformers' Qwen3-VL image processor on committed fixtures
//! (tools/make_preprocess_fixtures.py): grid_thw equal, pixel_values within 1e-6.

use std::io::Read;
use std::path::PathBuf;

use qoq_data::preprocess::{decode_rgb, ImageProcessor, ImageProcessorConfig};

fn read_f32_gz(path: PathBuf) -> Vec<f32> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length");
    a.iter().zip(b).enumerate().fold((0f32, 0), |(m, at), (i, (x, y))| {
        let d = (x - y).abs();
        if d > m { (d, i) } else { (m, at) }
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
            case["min_pixels"], case["max_pixels"], worst / 1536, worst % 1536
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
            .map(|i| decode_rgb(&std::fs::read(dir.join("videos").join(name).join(format!("{i:05}.png"))).unwrap()).unwrap())
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
