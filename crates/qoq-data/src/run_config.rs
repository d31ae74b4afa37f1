//! The `[data]` and `[processor]` tables of a run configuration (configs/data/*.toml; the
//! trainer's configs carry the same tables). Unknown keys are errors naming the key.

use std::path::PathBuf;

use serde::Deserialize;

use crate::preprocess::ImageProcessorConfig;
use crate::LoaderConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    pub video_frames: Option<usize>,
}

impl ProcessorConfig {
    /// The image processor settings: the defaults with this table's keys applied.
    pub fn resolve(&self) -> ImageProcessorConfig {
        self.resolve_on(ImageProcessorConfig::default())
    }

    /// `base` (a model family's processor) with this table's keys applied.
    pub fn resolve_on(&self, base: ImageProcessorConfig) -> ImageProcessorConfig {
        let mut c = base;
        c.min_pixels = self.min_pixels.unwrap_or(c.min_pixels);
        c.max_pixels = self.max_pixels.unwrap_or(c.max_pixels);
        c.video_frames = self.video_frames.unwrap_or(c.video_frames);
        c
    }
}

/// A `[data]` table: `shards` (the shard directory) and the rest as `LoaderConfig`'s
/// fields with its defaults. The error names the key.
pub fn loader_from_table(mut data: toml::Table) -> std::result::Result<(PathBuf, LoaderConfig), String> {
    let shards = match data.remove("shards") {
        Some(toml::Value::String(s)) => PathBuf::from(s),
        Some(other) => return Err(format!("`data.shards` must be a path string, found {}", other.type_str())),
        None => return Err("missing key `data.shards` (the shard directory)".into()),
    };
    let loader: LoaderConfig = data.try_into().map_err(|e| format!("[data]: {e}"))?;
    Ok((shards, loader))
}
