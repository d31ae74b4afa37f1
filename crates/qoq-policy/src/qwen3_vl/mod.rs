//! Qwen3-VL (`model_type: qwen3_vl`): QoQ-Med3-VL-8B, QoQ-Med3-VL-8B-MIMIC and
//! Qwen3-VL-8B-MIMIC. LayerNorm vision blocks with learned, interpolated positions and
//! DeepStack taps; a Qwen3 decoder (q/k norm, no bias) with interleaved multimodal rope.

mod config;
mod model;
mod rope_index;
mod vision;

pub use config::{Qwen3VLConfig, TextConfig, VisionConfig};
pub use model::Qwen3VL;
pub use rope_index::rope_index;
