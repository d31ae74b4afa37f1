//! QoQ-Med rewards, each in [0, 1] (definitions: docs/drpo.md section 3; users' guide: the
//! workspace README, "Rewards and the `score` tool"):
//!
//! - [`f1`]: set F1 between the labels of the last closed `\boxed{}` and the ground truth;
//! - [`grounding`]: IoU of the ```json `bbox_2d` boxes against boxes or a segmentation mask;
//! - [`format`]: the continuous format score of the first fenced block, and the length score;
//! - [`jaccard`]: token-set Jaccard for open-ended answers (QoQ-Med3);
//! - [`combine`]: weights, the presets `qoq-med`, `paper`, `qoq-med3`, and batch scoring;
//! - [`eval`]: the paper's evaluation protocol (dataset -> domain -> overall).
//!
//! No libtorch: this crate is plain Rust, so the `score` tool runs anywhere.
//!
//! ```
//! use qoq_rewards::{Preset, RewardConfig, Scorer, Target};
//! let config = RewardConfig { preset: Some(Preset::Paper), ..Default::default() };
//! let scorer = Scorer::new(&config).unwrap();
//! let s = scorer.score(r"\boxed{Melanoma}", &Target { answer: "melanoma", ..Default::default() });
//! assert_eq!(s.f1, 1.0);
//! assert_eq!(s.overall, 0.6 * 1.0 + 0.1 * s.length);
//! ```

pub mod answer;
pub mod combine;
mod error;
pub mod eval;
pub mod f1;
pub mod format;
pub mod grounding;
pub mod jaccard;
pub mod json_block;
#[doc(hidden)]
pub mod testing;

pub use combine::{Preset, RewardConfig, Scorer, Scores, Target, Weights};
pub use error::RewardError;
pub use grounding::{BBox, IouAggregation, Mask};
