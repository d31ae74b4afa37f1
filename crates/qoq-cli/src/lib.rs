//! Shared pieces of the command-line tools: progress bars and memory readings.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `total` items with rate and ETA, drawn on stderr.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .expect("static template is valid")
        .progress_chars("=> "),
    );
    bar
}

/// What preprocessing one sample produced, without keeping its pixel values (~6 MB per
/// 512x512 image).
#[derive(Debug, Clone, Copy, Default)]
pub struct PreparedCounts {
    /// Images and videos.
    pub inputs: usize,
    /// Visual tokens after merging.
    pub tokens: usize,
    /// f32 values of pixel_values.
    pub values: usize,
}

/// Preprocesses `batch` on all threads, keeping only the counts, in input order.
pub fn prepare_counts(
    processor: &qoq_data::preprocess::ImageProcessor,
    batch: &[qoq_data::Sample],
) -> Vec<qoq_data::Result<PreparedCounts>> {
    use rayon::prelude::*;
    let merge = processor.config.merge_size;
    batch
        .par_iter()
        .map(|s| {
            processor.prepare(s).map(|m| {
                let inputs = m.images.iter().chain(&m.videos);
                PreparedCounts {
                    inputs: inputs.clone().count(),
                    tokens: inputs.clone().map(|v| v.num_tokens(merge)).sum(),
                    values: inputs.map(|v| v.pixel_values.len()).sum(),
                }
            })
        })
        .collect()
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The `[data]` and `[processor]` tables of a run configuration (configs/data/*.toml; the
/// trainer's configs carry the same tables). Unknown keys are errors naming the key.
pub mod config {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use anyhow::{Context, Result};
    use qoq_data::preprocess::ImageProcessorConfig;
    use qoq_data::LoaderConfig;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DataConfig {
        /// Shard directory, relative to the working directory.
        pub shards: PathBuf,
        #[serde(default)]
        pub shuffle: bool,
        #[serde(default)]
        pub seed: u64,
        #[serde(default = "default_window")]
        pub window_row_groups: usize,
        #[serde(default)]
        pub domain_weights: Option<BTreeMap<String, f64>>,
        #[serde(default = "default_bad")]
        pub max_bad_fraction: f64,
        /// Keep only rows of these splits (e.g. ["train"]); all rows when absent.
        #[serde(default)]
        pub splits: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProcessorConfig {
        pub min_pixels: Option<u64>,
        pub max_pixels: Option<u64>,
        pub video_frames: Option<usize>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RunConfig {
        pub data: DataConfig,
        pub processor: Option<ProcessorConfig>,
    }

    fn default_window() -> usize {
        4
    }
    fn default_bad() -> f64 {
        0.01
    }

    impl RunConfig {
        pub fn from_file(path: &Path) -> Result<Self> {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: invalid configuration", path.display()))
        }

        pub fn loader(&self) -> LoaderConfig {
            let d = &self.data;
            LoaderConfig {
                shuffle: d.shuffle,
                seed: d.seed,
                window_row_groups: d.window_row_groups,
                domain_weights: d.domain_weights.clone(),
                max_bad_fraction: d.max_bad_fraction,
                splits: d.splits.clone(),
                ..Default::default()
            }
        }

        pub fn processor(&self) -> ImageProcessorConfig {
            let mut c = ImageProcessorConfig::default();
            if let Some(p) = &self.processor {
                c.min_pixels = p.min_pixels.unwrap_or(c.min_pixels);
                c.max_pixels = p.max_pixels.unwrap_or(c.max_pixels);
                c.video_frames = p.video_frames.unwrap_or(c.video_frames);
            }
            c
        }
    }
}
