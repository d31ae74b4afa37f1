//! Fixture loading shared by this crate's tests: the committed tiny checkpoints and
//! cases of `tests/fixtures`, and the `Inputs` a case describes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qoq_policy::{Grid, Inputs};
use tch::{Kind, Tensor};

pub fn fixtures(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(family)
}

pub fn case(family: &str, name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures(family).join(format!("cases/{name}.safetensors"))).unwrap().into_iter().collect()
}

fn grids(t: Option<&Tensor>) -> Vec<Grid> {
    t.map(|t| Vec::<Vec<i64>>::try_from(t).unwrap().into_iter().map(|g| [g[0], g[1], g[2]]).collect())
        .unwrap_or_default()
}

pub fn inputs(t: &HashMap<String, Tensor>) -> Inputs<'_> {
    Inputs {
        input_ids: t.get("input_ids"),
        attention_mask: t.get("attention_mask"),
        pixel_values: t.get("pixel_values"),
        image_grids: grids(t.get("image_grid_thw")),
        pixel_values_videos: t.get("pixel_values_videos"),
        video_grids: grids(t.get("video_grid_thw")),
        video_seconds_per_grid: t
            .get("second_per_grid_ts")
            .map(|s| Vec::<f64>::try_from(&s.to_kind(Kind::Double)).unwrap())
            .unwrap_or_default(),
        ..Default::default()
    }
}
