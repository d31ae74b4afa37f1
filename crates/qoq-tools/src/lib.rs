//! The binaries of the project (`src/bin/*`) and what they share: progress bars, memory
//! readings, run configuration, and the `score` tool's input handling ([`scoring`]).
//! No library depends on this crate.

pub mod files;
pub mod ranks;
pub mod scoring;

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

pub use qoq_train::peak_rss_mib;

/// The `[data]` and `[processor]` tables of a run configuration (configs/data/*.toml; the
/// trainer's configs carry the same tables). Unknown keys are errors naming the key.
pub mod config {
    use std::path::{Path, PathBuf};

    use anyhow::{anyhow, Context, Result};
    use qoq_data::preprocess::ImageProcessorConfig;
    use qoq_data::run_config::{loader_from_table, ProcessorConfig};
    use qoq_data::LoaderConfig;
    use serde::Deserialize;

    #[derive(Debug)]
    pub struct RunConfig {
        /// `data.shards`: the shard directory, relative to the working directory.
        pub shards: PathBuf,
        /// The rest of `[data]`: `LoaderConfig`'s own fields, with its defaults.
        pub loader: LoaderConfig,
        pub processor: Option<ProcessorConfig>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawRunConfig {
        data: toml::Table,
        processor: Option<ProcessorConfig>,
    }

    impl RunConfig {
        pub fn from_file(path: &Path) -> Result<Self> {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let invalid = || format!("{}: invalid configuration", path.display());
            let raw: RawRunConfig = toml::from_str(&text).with_context(invalid)?;
            let (shards, loader) = loader_from_table(raw.data).map_err(|e| anyhow!(e)).with_context(invalid)?;
            Ok(Self { shards, loader, processor: raw.processor })
        }

        pub fn processor(&self) -> ImageProcessorConfig {
            self.processor.clone().unwrap_or_default().resolve()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::config::RunConfig;

    fn parse(text: &str) -> anyhow::Result<RunConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        RunConfig::from_file(&path)
    }

    #[test]
    fn data_table_takes_loader_defaults_and_rejects_unknown_keys() {
        let c = parse("[data]\nshards = \"d\"\nseed = 3\nsplits = [\"train\"]\n").unwrap();
        let defaults = qoq_data::LoaderConfig::default();
        assert_eq!(c.shards, std::path::PathBuf::from("d"));
        assert_eq!(
            (c.loader.seed, c.loader.window_row_groups, c.loader.max_bad_fraction),
            (3, defaults.window_row_groups, defaults.max_bad_fraction)
        );
        assert_eq!(c.loader.splits, Some(vec!["train".to_string()]));
        let err = format!("{:#}", parse("[data]\nshards = \"d\"\nshufle = true\n").unwrap_err());
        assert!(err.contains("shufle") && err.contains("run.toml"), "{err}");
        let err = format!("{:#}", parse("[data]\nseed = 1\n").unwrap_err());
        assert!(err.contains("data.shards"), "{err}");
        for shipped in ["synthetic", "climb"] {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/data/{shipped}.toml"));
            RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{shipped}: {e:#}"));
        }
    }
}
