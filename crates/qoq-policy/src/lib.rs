//! The Qwen3-VL policy on libtorch. This first piece turns the data pipeline's
//! preprocessed media into the model's vision inputs and checks, before any forward,
//! that a prompt holds exactly as many placeholder tokens as its images produce (the
//! "image features and image tokens do not match" failure of the Python stacks).
//!
//! ```no_run
//! use qoq_data::preprocess::ImageProcessor;
//! use qoq_policy::VisionBatch;
//! let proc = ImageProcessor::default();
//! let img = image::RgbImage::new(512, 512);
//! let input = proc.preprocess_image(&img).unwrap();
//! let batch = VisionBatch::new(&[input], tch::Device::Cpu).unwrap();
//! assert_eq!(batch.pixel_values.size(), vec![1024, 1536]);
//! ```

pub mod chat;
pub mod config;
pub mod generate;
mod error;
pub mod model;
pub mod rope;
pub mod text;
pub mod vision;
mod vision_inputs;
pub mod weights;

pub use config::Qwen3VLConfig;
pub use error::PolicyError;
pub use generate::{Rollouts, SamplingConfig};
pub use model::{DecodeState, Inputs, Qwen3VL};
pub use vision_inputs::{count_placeholders, VisionBatch};
