//! CLIMB / MIMIC-IV samples for QoQ-Med training: the parquet shard format, a streaming
//! loader (row-group windows, column projection, seeded epoch shuffling, per-rank
//! sharding, resumable cursor, domain mixing), converters from the original JSONL files,
//! Qwen3-VL image preprocessing, ECG preprocessing for the ECG-JEPA encoder, a reader
//! for files written by `torch.save` ([`torch_file`]), and a synthetic CLIMB-like set.
//!
//! ```no_run
//! use qoq_data::{Loader, LoaderConfig, preprocess::ImageProcessor};
//! let mut loader = Loader::open("data/synthetic", LoaderConfig::default())?;
//! let proc = ImageProcessor::default();
//! for sample in loader.by_ref() {
//!     let sample = sample?;
//!     let media = proc.prepare(&sample)?;
//!     println!("{} {} {:?}", sample.id, sample.domain, media.images[0].grid_thw);
//! }
//! println!("bad rows: {}", loader.bad_rows().bad);
//! # Ok::<(), qoq_data::DataError>(())
//! ```

pub mod convert;
pub mod domain;
mod error;
mod loader;
mod plan;
pub mod preprocess;
pub mod rng;
pub mod run_config;
mod sample;
pub mod schema;
mod shards;
pub mod synthetic;
pub mod synthetic_benchmark;
pub mod synthetic_mimic;
pub mod torch_file;
mod validate;

pub use error::{DataError, Result};
pub use loader::{BadRowStats, Loader, LoaderConfig};
pub use plan::{Cursor, EpochPlan, PlanOptions, RowRef, Unit};
pub use sample::{LabeledBox, Sample, Signal};
pub use shards::{Shard, ShardSet, ShardWriter};
pub use validate::{check_sample, image_size, BadRow, Checks};
