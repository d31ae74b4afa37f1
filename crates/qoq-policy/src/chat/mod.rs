//! The Qwen3-VL chat template and tokenizer, byte-identical to transformers'
//! `Qwen3VLProcessor.apply_chat_template` followed by the processor call that expands the
//! image and video placeholders (transformers 5.x).
//!
//! Three steps turn a conversation into the model's input ids:
//!
//! 1. [`render`] (or [`render_with`]) writes the prompt text, as the chat template of
//!    `Qwen/Qwen3-VL-*-Instruct` does ([`Template::Instruct`], the default) or that of
//!    `Qwen/Qwen3-VL-*-Thinking` ([`Template::Thinking`]). Each image becomes
//!    `<|vision_start|><|image_pad|><|vision_end|>` and each video
//!    `<|vision_start|><|video_pad|><|vision_end|>`. The templates are reproduced in plain Rust,
//!    not interpreted.
//! 2. [`Tokenizer::encode`] tokenizes it with Qwen's tokenizer (special tokens recognised,
//!    nothing added: Qwen adds no BOS).
//! 3. [`expand_placeholders`] replaces each `<|image_pad|>` by as many copies as the image
//!    has merged tokens, and each `<|video_pad|>` by one block per temporal patch,
//!    `<{t:.1} seconds><|vision_start|><|video_pad|>...<|vision_end|>`, exactly as the
//!    processor lays videos out (the template's outer `<|vision_start|>`/`<|vision_end|>` stay
//!    around the blocks). [`expand_text`] does the same on the text.
//!
//! ```no_run
//! use qoq_policy::chat::{self, Content, Message, Tokenizer, VideoLayout};
//! let tok = Tokenizer::from_file(".qwen-tokenizer/tokenizer.json")?;
//! let messages = vec![
//!     Message::system("You are a radiologist."),
//!     Message::user(vec![Content::Image, Content::text("Findings?")]),
//! ];
//! let text = chat::render(&messages, true)?;
//! let ids = tok.encode(&text)?;
//! // A 512x512 image: grid 1x32x32 patches, 2x2 merge -> 256 tokens.
//! let ids = chat::expand_placeholders(&tok, &ids, &[256], &[])?;
//! # Ok::<(), qoq_policy::PolicyError>(())
//! ```
//!
//! Where this differs from the Jinja templates on purpose (each is an input the templates
//! would render into something no caller wants, so it is refused with
//! [`PolicyError::Input`]): an unknown role (the templates print nothing for it), an image or
//! video in a system or assistant message (the Instruct template drops it silently, so the
//! processor would then find fewer placeholders than images), a system message that is not
//! the first one under the Instruct template (dropped silently there; the Thinking template
//! renders it as a turn, and so does [`render_with`] for it), an empty conversation, and
//! content items that are neither text, image nor video (skipped silently by the templates).

mod messages;
mod placeholders;
mod python_json;
mod template;
mod tokenizer;

pub use messages::{messages_from_json, Content, Message, ToolArguments, ToolCall};
pub use placeholders::{encode_conversation, expand_placeholders, expand_text, merged_tokens, VideoLayout};
pub use template::{render, render_with, RenderOptions, Template, QWEN2_DEFAULT_SYSTEM};
pub use tokenizer::Tokenizer;

use crate::PolicyError;

/// `<|im_start|>`: opens a turn.
pub const IM_START: &str = "<|im_start|>";
/// `<|im_end|>`: closes a turn; the end-of-turn token a generation stops at.
pub const IM_END: &str = "<|im_end|>";
/// `<|vision_start|>`: opens an image, a video or one video frame block.
pub const VISION_START: &str = "<|vision_start|>";
/// `<|vision_end|>`: closes what `<|vision_start|>` opened.
pub const VISION_END: &str = "<|vision_end|>";
/// `<|image_pad|>`: one per merged image token after expansion.
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// `<|video_pad|>`: one per merged video token after expansion.
pub const VIDEO_PAD: &str = "<|video_pad|>";

fn input(msg: impl Into<String>) -> PolicyError {
    PolicyError::Input(msg.into())
}
