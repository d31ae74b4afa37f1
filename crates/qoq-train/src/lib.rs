//! The DRPO / GRPO trainer for the Qwen3-VL policy: advantages (GRPO, Dr.GRPO, DRPO with
//! elbow k-means), the PPO-clip loss, AdamW with checkpointable state, atomic checkpoints,
//! TensorBoard event files, and the loop that ties them to the data, reward and policy
//! crates. The binaries `train` and `export` drive it.
//!
//! ```no_run
//! use qoq_train::{config::TrainConfig, Trainer};
//! let config = TrainConfig::from_file("configs/demo.toml".as_ref())?;
//! let mut trainer = Trainer::new(config, false)?;
//! trainer.run(|step, metrics| println!("{step}: {:?}", metrics.get("reward/overall")))?;
//! # Ok::<(), qoq_train::TrainError>(())
//! ```

pub mod advantage;
pub mod checkpoint;
pub mod config;
mod error;
pub mod kmeans;
pub mod loss;
pub mod optim;
pub mod prompts;
pub mod summary;
pub mod tensorboard;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{Metrics, Trainer};
