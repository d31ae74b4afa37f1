//! Qwen2.5-VL (`model_type: qwen2_5_vl`): QoQ-Med-VL-7B. RMSNorm + SwiGLU vision blocks
//! with window attention (full attention in `fullatt_block_indexes`), no learned positions,
//! no DeepStack; a Qwen2 decoder (q/k/v bias, no q/k norm) with sectioned multimodal rope.
//! Checked against transformers 5.24 (`tests/fixtures/qwen2_5_vl`).

mod config;
mod model;
mod rope_index;
mod vision;

pub use config::{Qwen25VLConfig, TextConfig, VisionConfig};
pub use model::{checkpoint_name, in_memory_name, NameLayout, Qwen25VL};
pub use rope_index::{rope_index, RopeInputs};
pub use vision::window_index;
