//! Shared by the policy tests: the committed transformers fixtures (tools/make_policy_fixtures.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qoq_policy::Grid;
use qoq_policy::Inputs;
use tch::Tensor;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/policy")
}

/// A case's tensors (`cases/<name>.safetensors`).
pub fn case(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("cases/{name}.safetensors"))).unwrap().into_iter().collect()
}

/// A case's metadata (`cases/<name>.json`).
pub fn case_meta(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("cases/{name}.json"))).unwrap()).unwrap()
}

pub fn grids(t: Option<&Tensor>) -> Vec<Grid> {
    t.map(|t| Vec::<Vec<i64>>::try_from(t).unwrap().into_iter().map(|g| [g[0], g[1], g[2]]).collect())
        .unwrap_or_default()
}

/// The model inputs a case holds.
pub fn inputs(t: &HashMap<String, Tensor>) -> Inputs<'_> {
    Inputs {
        input_ids: t.get("input_ids"),
        attention_mask: t.get("attention_mask"),
        pixel_values: t.get("pixel_values"),
        image_grids: grids(t.get("image_grid_thw")),
        pixel_values_videos: t.get("pixel_values_videos"),
        video_grids: grids(t.get("video_grid_thw")),
        ..Default::default()
    }
}
