//! The policy models on libtorch: two families behind one interface, [`Policy`].
//!
//! - [`qwen3_vl`]: Qwen3-VL (QoQ-Med3-VL-8B, QoQ-Med3-VL-8B-MIMIC, Qwen3-VL-8B-MIMIC).
//! - [`qwen2_5_vl`]: Qwen2.5-VL (QoQ-Med-VL-7B).
//!
//! [`load_policy`] reads `config.json`'s `model_type` and loads the right family; the
//! trainer and the tools hold a `Box<dyn Policy>`. Shared layers live in [`layers`];
//! prompts (chat templates, tokenizer, placeholder expansion) in [`chat`]. Rollouts come
//! from [`RolloutEngine`] (continuous batching over fixed KV slots), tokens from [`draw`].
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
pub mod ecg;
mod engine;
mod error;
pub mod gate;
mod generate;
mod layers;
mod policy;
pub mod qwen2_5_vl;
pub mod qwen3_vl;
mod sampler;
mod update;
mod vision_inputs;
mod vision_recompute;
pub mod weights;

pub use ecg::{EcgConfig, EcgEncoderConfig, EcgInit, TimeSeriesEmbedding};
pub use engine::{slot_bytes, EngineConfig, EngineStats, OnePrompt, PromptSource, RolloutEngine};
pub use error::PolicyError;
pub use generate::{response_stream, Rollouts, SamplingConfig};
pub use layers::decoder::{DecoderLayer, TextModel};
pub use layers::kv_cache::{DecodeState, LayerCache};
pub use layers::rope::{Grid, RopeIndex};
pub use policy::{
    load_policy, Embedded, Family, Inputs, ModuleGroup, Policy, PromptFormat, SpecialTokens, VisionFn, VisionPass,
    VisionTower,
};
pub use qwen2_5_vl::{Qwen25VL, Qwen25VLConfig};
pub use qwen3_vl::{Qwen3VL, Qwen3VLConfig};
pub use sampler::{draw, warp_logits, FIRST_CANDIDATES};
pub use update::{
    forward_for_update, forward_for_update_gated, idle_update, UpdateForward, UpdateOptions, DEFAULT_CHUNK_TOKENS,
};
pub use vision_inputs::{count_placeholders, VisionBatch};
