//! The DRPO / GRPO trainer for the Qwen3-VL policy: advantages (GRPO, Dr.GRPO, DRPO with
//! elbow k-means), the PPO-clip loss, AdamW with checkpointable state, atomic checkpoints,
//! TensorBoard event files, and the loop that ties them to the data, reward and policy
//! crates, on one process or data-parallel over c10d ranks (`parallel`, `sharded`, `fsdp`). The
//! binaries `train` and `export` drive it.
//!
//! ```no_run
//! use qoq_train::{config::TrainConfig, parallel::DataParallel, Trainer};
//! let config = TrainConfig::from_file("configs/demo.toml".as_ref())?;
//! let mut trainer = Trainer::new(config, false, DataParallel::single())?;
//! trainer.run(|step, metrics| println!("{step}: {:?}", metrics.get("reward/overall")))?;
//! # Ok::<(), qoq_train::TrainError>(())
//! ```

pub mod advantage;
pub mod checkpoint;
mod checkpoint_shards;
pub mod config;
mod data;
mod error;
pub mod evaluation;
mod fsdp;
mod kmeans;
pub mod loss;
mod memory;
mod metrics;
mod micro_batches;
pub mod optim;
pub mod parallel;
pub mod plan;
mod precision;
mod prompts;
mod rl_step;
mod rollout;
mod sft;
mod sharded;
mod summary;
pub mod tensorboard;
mod trainer;
mod validation;

pub use error::TrainError;
pub use memory::{peak_rss_mib, release_freed_memory, resident_mib, set_trim_freed_memory};
pub use trainer::{Metrics, Trainer};
