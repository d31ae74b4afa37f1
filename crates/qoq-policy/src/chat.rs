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

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

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

// ============================================================================ tokenizer

/// Qwen's byte-level BPE tokenizer (151,643 tokens plus 26 added ones, `<|endoftext|>` 151643
/// to `</think>` 151668), read from a Hugging Face `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    added: HashSet<u32>,
    image_pad: u32,
    video_pad: u32,
    vision_start: u32,
    vision_end: u32,
    im_start: u32,
    im_end: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` (e.g. `.qwen-tokenizer/tokenizer.json`, which `tools/setup.sh`
    /// links into the checkout). Errors ([`PolicyError::Checkpoint`]) if the file cannot be
    /// read or lacks Qwen's chat and vision tokens.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: not a usable tokenizer.json: {e}", path.display())))?;
        Self::from_tokenizer(inner).map_err(|e| match e {
            PolicyError::Checkpoint(m) => PolicyError::Checkpoint(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Wraps an already loaded tokenizer; errors if it lacks Qwen's chat and vision tokens.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Result<Self, PolicyError> {
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| PolicyError::Checkpoint(format!("the tokenizer has no `{t}` token; is it Qwen's?")))
        };
        let added = inner.get_added_tokens_decoder().keys().copied().collect();
        Ok(Self {
            image_pad: id(IMAGE_PAD)?,
            video_pad: id(VIDEO_PAD)?,
            vision_start: id(VISION_START)?,
            vision_end: id(VISION_END)?,
            im_start: id(IM_START)?,
            im_end: id(IM_END)?,
            added,
            inner,
        })
    }

    /// The ids of `text`. Added tokens written in the text (`<|im_start|>`, `<|image_pad|>`,
    /// `<think>`, ...) become their single ids; no BOS/EOS is added. Equal to transformers'
    /// `tokenizer(text)["input_ids"]`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PolicyError> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| input(format!("tokenizing failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special` the special tokens (`<|im_start|>`,
    /// `<|image_pad|>`, ...; not `<think>` or `<tool_call>`, which are plain added tokens) are
    /// left out. Bytes that do not form UTF-8 (a character cut between tokens) become U+FFFD,
    /// as in transformers' `decode`. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, PolicyError> {
        self.inner.decode(ids, skip_special).map_err(|e| input(format!("decoding failed: {e}")))
    }

    /// The id of a token (a vocabulary entry such as `"Ġthe"` or an added token such as
    /// `"<|im_end|>"`), if the tokenizer has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size with the added tokens (151,669 for Qwen3-VL; the model's embedding
    /// table is larger, 151,936 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is an added token (chat markup, vision markers, `<think>`, ...).
    pub fn is_added(&self, id: u32) -> bool {
        self.added.contains(&id)
    }

    /// `<|image_pad|>`'s id (151655).
    pub fn image_pad_id(&self) -> u32 {
        self.image_pad
    }
    /// `<|video_pad|>`'s id (151656).
    pub fn video_pad_id(&self) -> u32 {
        self.video_pad
    }
    /// `<|vision_start|>`'s id (151652).
    pub fn vision_start_id(&self) -> u32 {
        self.vision_start
    }
    /// `<|vision_end|>`'s id (151653).
    pub fn vision_end_id(&self) -> u32 {
        self.vision_end
    }
    /// `<|im_start|>`'s id (151644).
    pub fn im_start_id(&self) -> u32 {
        self.im_start
    }
    /// `<|im_end|>`'s id (151645), where generation stops.
    pub fn im_end_id(&self) -> u32 {
        self.im_end
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

// ============================================================================ messages

/// One piece of a message's content, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Text(String),
    /// An image: `<|vision_start|><|image_pad|><|vision_end|>` in the prompt.
    Image,
    /// A video: `<|vision_start|><|video_pad|><|vision_end|>` in the prompt.
    Video,
}

impl Content {
    pub fn text(s: impl Into<String>) -> Self {
        Content::Text(s.into())
    }
}

/// The arguments of a tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolArguments {
    /// Written verbatim (the templates' `arguments is string` branch; OpenAI's wire form,
    /// where arguments are a JSON string).
    Text(String),
    /// JSON text (normally an object), written as the templates' `tojson` does in transformers:
    /// Python's `json.dumps` with `", "` and `": "` separators, non-ASCII kept, keys in the
    /// order given.
    Json(String),
}

/// A tool call made by the assistant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: ToolArguments,
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`; anything else is refused when rendering.
    pub role: String,
    /// The content in order. Empty is the empty string.
    pub content: Vec<Content>,
    /// The assistant's reasoning (`reasoning_content` in transformers' messages). The Instruct
    /// template ignores it; the Thinking template writes it as `<think>\n...\n</think>\n\n`
    /// for assistant turns after the last user query.
    pub reasoning: Option<String>,
    /// Tool calls of an assistant turn.
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A message with `role` and `content`, no reasoning and no tool calls.
    pub fn new(role: impl Into<String>, content: Vec<Content>) -> Self {
        Self { role: role.into(), content, reasoning: None, tool_calls: Vec::new() }
    }
    /// A system message holding `text`.
    pub fn system(text: impl Into<String>) -> Self {
        Self::new("system", text_content(text.into()))
    }
    /// A user message.
    pub fn user(content: Vec<Content>) -> Self {
        Self::new("user", content)
    }
    /// An assistant message holding `text`.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new("assistant", text_content(text.into()))
    }
    /// A tool response holding `text`.
    pub fn tool(text: impl Into<String>) -> Self {
        Self::new("tool", text_content(text.into()))
    }
    /// The same message with `reasoning`.
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning = Some(reasoning.into());
        self
    }
    /// The same message with `calls` added.
    pub fn with_tool_calls(mut self, calls: Vec<ToolCall>) -> Self {
        self.tool_calls.extend(calls);
        self
    }

    /// Number of images in the content.
    pub fn images(&self) -> usize {
        self.content.iter().filter(|c| matches!(c, Content::Image)).count()
    }
    /// Number of videos in the content.
    pub fn videos(&self) -> usize {
        self.content.iter().filter(|c| matches!(c, Content::Video)).count()
    }
}

fn text_content(s: String) -> Vec<Content> {
    if s.is_empty() {
        Vec::new()
    } else {
        vec![Content::Text(s)]
    }
}

/// Reads a conversation in transformers' (OpenAI-like) JSON form: an array of
/// `{"role", "content", "reasoning_content"?, "tool_calls"?}` where `content` is a string,
/// null, or a list of items `{"type": "text", "text": ...}`, `{"type": "image", ...}`
/// (also any item with an `image` or `image_url` key, or `"type": "image_url"`), or
/// `{"type": "video", ...}` (or a `video` key), tested in that order as the templates do;
/// `tool_calls` items are `{"function": {"name", "arguments"}}` or `{"name", "arguments"}`.
/// Keys of tool arguments keep their order. Errors name the message and item.
pub fn messages_from_json(text: &str) -> Result<Vec<Message>, PolicyError> {
    let v: Json = serde_json::from_str(text).map_err(|e| input(format!("conversation JSON: {e}")))?;
    let Json::Arr(items) = v else { return Err(input("conversation JSON: expected an array of messages")) };
    items.iter().enumerate().map(|(i, m)| message_from_json(m).map_err(|e| input(format!("message {i}: {e}")))).collect()
}

fn message_from_json(m: &Json) -> Result<Message, String> {
    let Json::Obj(_) = m else { return Err("expected an object".into()) };
    let role = match m.get("role") {
        Some(Json::Str(s)) => s.clone(),
        Some(_) => return Err("`role` is not a string".into()),
        None => return Err("no `role`".into()),
    };
    let content = match m.get("content") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Str(s)) => text_content(s.clone()),
        Some(Json::Arr(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                out.push(content_item(item).map_err(|e| format!("content item {j}: {e}"))?);
            }
            out
        }
        Some(_) => return Err("`content` is neither a string nor a list".into()),
    };
    let reasoning = match m.get("reasoning_content") {
        None | Some(Json::Null) => None,
        Some(Json::Str(s)) => Some(s.clone()),
        Some(_) => return Err("`reasoning_content` is not a string".into()),
    };
    let tool_calls = match m.get("tool_calls") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Arr(calls)) => {
            let mut out = Vec::with_capacity(calls.len());
            for (j, c) in calls.iter().enumerate() {
                out.push(tool_call(c).map_err(|e| format!("tool call {j}: {e}"))?);
            }
            out
        }
        Some(_) => return Err("`tool_calls` is not a list".into()),
    };
    Ok(Message { role, content, reasoning, tool_calls })
}

fn content_item(item: &Json) -> Result<Content, String> {
    let Json::Obj(_) = item else { return Err("expected an object".into()) };
    let ty = match item.get("type") {
        Some(Json::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    if ty == Some("image") || ty == Some("image_url") || item.get("image").is_some() || item.get("image_url").is_some() {
        Ok(Content::Image)
    } else if ty == Some("video") || item.get("video").is_some() {
        Ok(Content::Video)
    } else {
        match item.get("text") {
            Some(Json::Str(s)) => Ok(Content::Text(s.clone())),
            Some(_) => Err("`text` is not a string".into()),
            None => Err(format!("neither text, image nor video (type {:?})", ty.unwrap_or("missing"))),
        }
    }
}

fn tool_call(c: &Json) -> Result<ToolCall, String> {
    let Json::Obj(_) = c else { return Err("expected an object".into()) };
    let f = match c.get("function") {
        Some(f @ Json::Obj(_)) => f,
        Some(Json::Null) | None => c,
        Some(_) => return Err("`function` is not an object".into()),
    };
    let name = match f.get("name") {
        Some(Json::Str(s)) => s.clone(),
        _ => return Err("no string `name`".into()),
    };
    let arguments = match f.get("arguments") {
        Some(Json::Str(s)) => ToolArguments::Text(s.clone()),
        Some(Json::Null) | None => return Err(format!("`{name}` has no `arguments`")),
        Some(v) => ToolArguments::Json(v.dump_python()),
    };
    Ok(ToolCall { name, arguments })
}

// ============================================================================ rendering

/// Which Qwen3-VL chat template to reproduce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Template {
    /// `Qwen/Qwen3-VL-*-Instruct`'s: no reasoning handling, generation prompt
    /// `<|im_start|>assistant\n`.
    #[default]
    Instruct,
    /// `Qwen/Qwen3-VL-*-Thinking`'s: assistant turns after the last user query carry their
    /// reasoning in `<think>` blocks (from `reasoning`, or split off a content that holds
    /// `</think>`), generation prompt `<|im_start|>assistant\n<think>\n`.
    Thinking,
}

/// Rendering settings (the keyword arguments of `apply_chat_template`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderOptions {
    pub template: Template,
    /// Open an assistant turn at the end (for generation).
    pub add_generation_prompt: bool,
    /// Write `Picture N: ` / `Video N: ` before each image / video (numbered over the whole
    /// conversation).
    pub add_vision_id: bool,
    /// Function definitions, each as JSON text (e.g. `{"type": "function", "function": {...}}`);
    /// written into the system turn as the templates' `tojson` does.
    pub tools: Vec<String>,
}

/// The Instruct template's rendering of `messages` (no vision ids, no tools).
pub fn render(messages: &[Message], add_generation_prompt: bool) -> Result<String, PolicyError> {
    render_with(messages, &RenderOptions { add_generation_prompt, ..Default::default() })
}

const TOOLS_HEAD: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const TOOLS_TAIL: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

/// `messages` rendered by the chosen template with the given options.
pub fn render_with(messages: &[Message], opts: &RenderOptions) -> Result<String, PolicyError> {
    validate(messages, opts.template)?;
    let tools = opts
        .tools
        .iter()
        .enumerate()
        .map(|(i, t)| python_json(t).map_err(|e| input(format!("tool {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();

    // The system turn (with the tool list if any).
    let first_system = messages[0].role == "system";
    if !tools.is_empty() {
        out.push_str("<|im_start|>system\n");
        if first_system {
            out.push_str(&plain_text(&messages[0]));
            out.push_str("\n\n");
        }
        out.push_str(TOOLS_HEAD);
        for t in &tools {
            out.push('\n');
            out.push_str(t);
        }
        out.push_str(TOOLS_TAIL);
    } else if first_system {
        out.push_str("<|im_start|>system\n");
        out.push_str(&plain_text(&messages[0]));
        out.push_str("<|im_end|>\n");
    }

    // The Thinking template keeps reasoning only after the last real user query (a user turn
    // that is not wholly a <tool_response>).
    let last_query = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| {
            if m.role != "user" {
                return false;
            }
            let c = plain_media_text(m);
            !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))
        })
        .map_or(messages.len() - 1, |(i, _)| i);

    let mut count = VisionCount::default();
    let n = messages.len();
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" => {
                // The Instruct template renders only a first system message (above); validate()
                // refused later ones. The Thinking template renders later ones as turns.
                if i > 0 {
                    let content = render_content(m, &mut count, opts.add_vision_id);
                    let _ = write!(out, "<|im_start|>system\n{content}<|im_end|>\n");
                }
            }
            "user" => {
                let content = render_content(m, &mut count, opts.add_vision_id);
                let _ = write!(out, "<|im_start|>user\n{content}<|im_end|>\n");
            }
            "assistant" => match opts.template {
                Template::Instruct => {
                    out.push_str("<|im_start|>assistant\n");
                    out.push_str(&plain_text(m));
                    write_tool_calls(&mut out, &m.tool_calls, !m.content.is_empty())?;
                    out.push_str("<|im_end|>\n");
                }
                Template::Thinking => {
                    let mut content = plain_text(m);
                    let reasoning = match &m.reasoning {
                        Some(r) => r.clone(),
                        None if content.contains("</think>") => {
                            let before = content.split("</think>").next().unwrap_or("");
                            let r = before.trim_end_matches('\n').rsplit("<think>").next().unwrap_or("");
                            let r = r.trim_start_matches('\n').to_string();
                            content = content.rsplit("</think>").next().unwrap_or("").trim_start_matches('\n').to_string();
                            r
                        }
                        None => String::new(),
                    };
                    if i > last_query && (i == n - 1 || !reasoning.is_empty()) {
                        let _ = write!(
                            out,
                            "<|im_start|>assistant\n<think>\n{}\n</think>\n\n{}",
                            reasoning.trim_matches('\n'),
                            content.trim_start_matches('\n')
                        );
                    } else {
                        let _ = write!(out, "<|im_start|>assistant\n{content}");
                    }
                    write_tool_calls(&mut out, &m.tool_calls, !content.is_empty())?;
                    out.push_str("<|im_end|>\n");
                }
            },
            "tool" => {
                if i == 0 || messages[i - 1].role != "tool" {
                    out.push_str("<|im_start|>user");
                }
                let content = render_content(m, &mut count, opts.add_vision_id);
                let _ = write!(out, "\n<tool_response>\n{content}\n</tool_response>");
                if i == n - 1 || messages[i + 1].role != "tool" {
                    out.push_str("<|im_end|>\n");
                }
            }
            _ => unreachable!("validate() refuses other roles"),
        }
    }
    if opts.add_generation_prompt {
        out.push_str(match opts.template {
            Template::Instruct => "<|im_start|>assistant\n",
            Template::Thinking => "<|im_start|>assistant\n<think>\n",
        });
    }
    Ok(out)
}

fn validate(messages: &[Message], template: Template) -> Result<(), PolicyError> {
    if messages.is_empty() {
        return Err(input("no messages to render"));
    }
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "assistant" => {
                if m.images() + m.videos() > 0 {
                    let what = if m.images() > 0 { "an image" } else { "a video" };
                    return Err(input(format!(
                        "message {i}: a {} message cannot hold {what}; put media in a user (or tool) message",
                        m.role
                    )));
                }
                if m.role == "system" && i > 0 && template == Template::Instruct {
                    return Err(input(format!(
                        "message {i}: a system message must come first (the Instruct template drops later ones)"
                    )));
                }
            }
            "user" | "tool" => {}
            other => {
                return Err(input(format!(
                    "message {i}: unknown role {other:?} (expected system, user, assistant or tool)"
                )))
            }
        }
        if !m.tool_calls.is_empty() && m.role != "assistant" {
            return Err(input(format!("message {i}: only assistant messages make tool calls")));
        }
        if m.reasoning.is_some() && m.role != "assistant" {
            return Err(input(format!("message {i}: only assistant messages carry reasoning")));
        }
    }
    Ok(())
}

#[derive(Default)]
struct VisionCount {
    images: usize,
    videos: usize,
}

/// Text items only (system and assistant content; media were refused).
fn plain_text(m: &Message) -> String {
    m.content
        .iter()
        .filter_map(|c| match c {
            Content::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Content with media markers but no vision ids and no counting (the Thinking template's
/// last-query scan; ids cannot change its prefix/suffix test).
fn plain_media_text(m: &Message) -> String {
    let mut s = String::new();
    for c in &m.content {
        match c {
            Content::Text(t) => s.push_str(t),
            Content::Image => s.push_str("<|vision_start|><|image_pad|><|vision_end|>"),
            Content::Video => s.push_str("<|vision_start|><|video_pad|><|vision_end|>"),
        }
    }
    s
}

fn render_content(m: &Message, count: &mut VisionCount, add_vision_id: bool) -> String {
    let mut s = String::new();
    for c in &m.content {
        match c {
            Content::Text(t) => s.push_str(t),
            Content::Image => {
                count.images += 1;
                if add_vision_id {
                    let _ = write!(s, "Picture {}: ", count.images);
                }
                s.push_str("<|vision_start|><|image_pad|><|vision_end|>");
            }
            Content::Video => {
                count.videos += 1;
                if add_vision_id {
                    let _ = write!(s, "Video {}: ", count.videos);
                }
                s.push_str("<|vision_start|><|video_pad|><|vision_end|>");
            }
        }
    }
    s
}

fn write_tool_calls(out: &mut String, calls: &[ToolCall], content_nonempty: bool) -> Result<(), PolicyError> {
    for (j, call) in calls.iter().enumerate() {
        if (j == 0 && content_nonempty) || j > 0 {
            out.push('\n');
        }
        let _ = write!(out, "<tool_call>\n{{\"name\": \"{}\", \"arguments\": ", call.name);
        match &call.arguments {
            ToolArguments::Text(t) => out.push_str(t),
            ToolArguments::Json(j) => {
                out.push_str(&python_json(j).map_err(|e| input(format!("tool call `{}`: arguments: {e}", call.name)))?)
            }
        }
        out.push_str("}\n</tool_call>");
    }
    Ok(())
}

// ============================================================================ placeholders

/// How the processor lays out one video: one block per temporal patch (two frames), each
/// preceded by its time stamp.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoLayout {
    /// Seconds of each block (its `grid_t` entries); written as `<{t:.1} seconds>`.
    pub timestamps: Vec<f64>,
    /// Merged tokens per block: `grid_h * grid_w / merge_size²`.
    pub tokens_per_frame: usize,
}

impl VideoLayout {
    /// The layout of a video whose frames were taken at `frame_indices` of a source running at
    /// `fps` frames per second, as `Qwen3VLProcessor` computes it: the indices are padded to a
    /// multiple of `temporal_patch_size` with the last one, and each block's time is the mean
    /// of its first and last frame's `index / fps`. (transformers uses fps 24 when a video
    /// comes without metadata.)
    pub fn from_frame_indices(
        frame_indices: &[usize],
        fps: f64,
        temporal_patch_size: usize,
        tokens_per_frame: usize,
    ) -> Result<Self, PolicyError> {
        if frame_indices.is_empty() {
            return Err(input("a video needs at least one frame"));
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(input(format!("video fps must be positive, got {fps}")));
        }
        if temporal_patch_size == 0 {
            return Err(input("temporal_patch_size must be at least 1"));
        }
        let mut idx = frame_indices.to_vec();
        let last = idx[idx.len() - 1];
        while !idx.len().is_multiple_of(temporal_patch_size) {
            idx.push(last);
        }
        let timestamps = idx
            .chunks(temporal_patch_size)
            .map(|g| (g[0] as f64 / fps + g[g.len() - 1] as f64 / fps) / 2.0)
            .collect();
        Ok(Self { timestamps, tokens_per_frame })
    }

    /// Number of blocks (`grid_t`).
    pub fn frames(&self) -> usize {
        self.timestamps.len()
    }

    /// Total `<|video_pad|>` tokens after expansion.
    pub fn tokens(&self) -> usize {
        self.frames() * self.tokens_per_frame
    }

    /// The time stamp text of block `i`, e.g. `<1.6 seconds>` (Python's `f"<{t:.1f} seconds>"`).
    pub fn timestamp_text(&self, i: usize) -> Option<String> {
        self.timestamps.get(i).map(|t| format!("<{t:.1} seconds>"))
    }
}

/// Merged tokens of an image (or one video block) of `grid_thw` patches.
pub fn merged_tokens(grid_thw: [u32; 3], merge_size: u32) -> usize {
    let merge = (merge_size.max(1) as usize).pow(2);
    grid_thw.iter().map(|&v| v as usize).product::<usize>() / merge
}

fn check_counts(found_images: usize, found_videos: usize, images: &[usize], videos: &[VideoLayout]) -> Result<(), PolicyError> {
    if found_images != images.len() {
        return Err(input(format!(
            "the prompt has {found_images} {IMAGE_PAD} placeholders but {} images were given",
            images.len()
        )));
    }
    if found_videos != videos.len() {
        return Err(input(format!(
            "the prompt has {found_videos} {VIDEO_PAD} placeholders but {} videos were given",
            videos.len()
        )));
    }
    if let Some(i) = videos.iter().position(|v| v.timestamps.is_empty()) {
        return Err(input(format!("video {i} has no frames")));
    }
    Ok(())
}

/// The processor's text: each `<|image_pad|>` of `text` repeated `images[i]` times (the i-th
/// image's merged tokens), each `<|video_pad|>` replaced by the blocks of `videos[j]`.
/// Errors unless the numbers of placeholders and of media agree.
pub fn expand_text(text: &str, images: &[usize], videos: &[VideoLayout]) -> Result<String, PolicyError> {
    check_counts(text.matches(IMAGE_PAD).count(), text.matches(VIDEO_PAD).count(), images, videos)?;
    let extra: usize = images.iter().sum::<usize>() * IMAGE_PAD.len()
        + videos.iter().map(|v| v.tokens() * VIDEO_PAD.len() + v.frames() * 48).sum::<usize>();
    let mut out = String::with_capacity(text.len() + extra);
    let (mut img, mut vid) = (images.iter(), videos.iter());
    let mut rest = text;
    loop {
        let next_img = rest.find(IMAGE_PAD);
        let next_vid = rest.find(VIDEO_PAD);
        let (at, is_image) = match (next_img, next_vid) {
            (None, None) => break,
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
            (Some(a), Some(b)) => if a < b { (a, true) } else { (b, false) },
        };
        out.push_str(&rest[..at]);
        if is_image {
            let n = *img.next().expect("counted");
            for _ in 0..n {
                out.push_str(IMAGE_PAD);
            }
            rest = &rest[at + IMAGE_PAD.len()..];
        } else {
            let v = vid.next().expect("counted");
            for t in &v.timestamps {
                let _ = write!(out, "<{t:.1} seconds>");
                out.push_str(VISION_START);
                for _ in 0..v.tokens_per_frame {
                    out.push_str(VIDEO_PAD);
                }
                out.push_str(VISION_END);
            }
            rest = &rest[at + VIDEO_PAD.len()..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The processor's ids from the rendered prompt's ids: each `<|image_pad|>` id repeated
/// `images[i]` times, each `<|video_pad|>` id replaced by the ids of `videos[j]`'s blocks
/// (time stamp text, `<|vision_start|>`, pads, `<|vision_end|>`). Equal to tokenizing
/// [`expand_text`]'s output, without tokenizing thousands of pads. Errors unless the numbers
/// of placeholders and of media agree, or if a `<|video_pad|>` follows ordinary text (the
/// time stamp would then tokenize together with it; the templates always put
/// `<|vision_start|>` there, and [`expand_text`] handles any text).
pub fn expand_placeholders(tok: &Tokenizer, ids: &[u32], images: &[usize], videos: &[VideoLayout]) -> Result<Vec<u32>, PolicyError> {
    let found_images = ids.iter().filter(|&&t| t == tok.image_pad).count();
    let found_videos = ids.iter().filter(|&&t| t == tok.video_pad).count();
    check_counts(found_images, found_videos, images, videos)?;
    let extra = images.iter().sum::<usize>() + videos.iter().map(|v| v.tokens() + v.frames() * 10).sum::<usize>();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let (mut img, mut vid) = (images.iter(), videos.iter());
    for (k, &t) in ids.iter().enumerate() {
        if t == tok.image_pad {
            let n = *img.next().expect("counted");
            out.extend(std::iter::repeat_n(tok.image_pad, n));
        } else if t == tok.video_pad {
            let v = vid.next().expect("counted");
            if k > 0 && !tok.is_added(ids[k - 1]) {
                return Err(input(format!(
                    "the {VIDEO_PAD} at position {k} follows ordinary text, not {VISION_START}; expand the text with expand_text and tokenize it"
                )));
            }
            for i in 0..v.frames() {
                let stamp = v.timestamp_text(i).expect("in range");
                out.extend(tok.encode(&stamp)?);
                out.push(tok.vision_start);
                out.extend(std::iter::repeat_n(tok.video_pad, v.tokens_per_frame));
                out.push(tok.vision_end);
            }
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// Renders, tokenizes and expands in one go: the model's input ids for `messages` with the
/// given images (merged tokens each) and videos, in the order they appear.
pub fn encode_conversation(
    tok: &Tokenizer,
    messages: &[Message],
    opts: &RenderOptions,
    images: &[usize],
    videos: &[VideoLayout],
) -> Result<Vec<u32>, PolicyError> {
    let text = render_with(messages, opts)?;
    let ids = tok.encode(&text)?;
    expand_placeholders(tok, &ids, images, videos)
}

// ============================================================================ JSON as Python writes it

/// A JSON value that keeps object keys in their order (serde_json's map sorts them unless its
/// `preserve_order` feature is on somewhere in the build), for `json.dumps`-exact output.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `json.dumps(x, ensure_ascii=False)`.
    fn dump_python(&self) -> String {
        let mut s = String::new();
        self.write_python(&mut s);
        s
    }

    fn write_python(&self, s: &mut String) {
        match self {
            Json::Null => s.push_str("null"),
            Json::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(s, "{i}");
            }
            Json::UInt(u) => {
                let _ = write!(s, "{u}");
            }
            Json::Float(f) => python_float(*f, s),
            Json::Str(t) => python_str(t, s),
            Json::Arr(items) => {
                s.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    v.write_python(s);
                }
                s.push(']');
            }
            Json::Obj(entries) => {
                s.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    python_str(k, s);
                    s.push_str(": ");
                    v.write_python(s);
                }
                s.push('}');
            }
        }
    }
}

/// JSON text re-written as transformers' `tojson` filter writes the parsed value.
fn python_json(text: &str) -> Result<String, String> {
    let v: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    Ok(v.dump_python())
}

fn python_str(t: &str, s: &mut String) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{08}' => s.push_str("\\b"),
            '\u{0c}' => s.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -5 < e <
/// 16 (with `.0` if integral), else `d.ddde±XX`.
fn python_float(f: f64, s: &mut String) {
    if f.is_nan() {
        s.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        s.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if neg {
        s.push('-');
    }
    let decpt = exp + 1; // value = 0.DIGITS x 10^decpt
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            s.push_str("0.");
            for _ in 0..(-decpt) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let d = decpt as usize;
            if digits.len() <= d {
                s.push_str(&digits);
                for _ in digits.len()..d {
                    s.push('0');
                }
                s.push_str(".0");
            } else {
                s.push_str(&digits[..d]);
                s.push('.');
                s.push_str(&digits[d..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Json, E> {
                Ok(Json::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Json, E> {
                Ok(Json::UInt(u))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Json, E> {
                Ok(Json::Float(f))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut entries: Vec<(String, Json)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    // As a Python dict: a repeated key keeps its first place and its last value.
                    match entries.iter_mut().find(|(ek, _)| *ek == k) {
                        Some(e) => e.1 = v,
                        None => entries.push((k, v)),
                    }
                }
                Ok(Json::Obj(entries))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(f: f64) -> String {
        let mut s = String::new();
        python_float(f, &mut s);
        s
    }

    #[test]
    fn floats_as_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (3e20, "3e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-7, "1.5e-07"),
            (12345.678, "12345.678"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (f, want) in cases {
            assert_eq!(py(f), want, "{f:e}");
        }
    }

    #[test]
    fn json_as_python_dumps() {
        let got = python_json(r#"{"b": [1, -2, 3.0, 1E2, true, null], "a": "é\"\\\n\u0001\u007f", "b": {}, "c": []}"#).unwrap();
        assert_eq!(got, "{\"b\": {}, \"a\": \"é\\\"\\\\\\n\\u0001\u{7f}\", \"c\": []}");
        assert_eq!(python_json("[1, 2.5e-10, 18446744073709551615, -9223372036854775808]").unwrap(), "[1, 2.5e-10, 18446744073709551615, -9223372036854775808]");
        assert!(python_json("{").is_err());
    }

    #[test]
    fn video_layout_timestamps() {
        let v = VideoLayout::from_frame_indices(&[0, 1, 2, 3, 4, 5, 6], 4.0, 2, 4).unwrap();
        assert_eq!(v.timestamps, vec![0.125, 0.625, 1.125, 1.5]);
        assert_eq!(v.timestamp_text(0).unwrap(), "<0.1 seconds>");
        assert_eq!(v.timestamp_text(1).unwrap(), "<0.6 seconds>");
        assert_eq!(v.timestamp_text(3).unwrap(), "<1.5 seconds>");
        assert!(VideoLayout::from_frame_indices(&[], 4.0, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], 0.0, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], f64::NAN, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], 1.0, 0, 4).is_err());
    }

    #[test]
    fn expand_text_layout_and_counts() {
        let v = VideoLayout { timestamps: vec![0.3, 1.6], tokens_per_frame: 2 };
        let got = expand_text("a<|image_pad|>b<|vision_start|><|video_pad|><|vision_end|>c<|image_pad|>", &[1, 3], std::slice::from_ref(&v)).unwrap();
        assert_eq!(
            got,
            "a<|image_pad|>b<|vision_start|><0.3 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>\
             <1.6 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|><|vision_end|>c<|image_pad|><|image_pad|><|image_pad|>"
        );
        assert!(expand_text("<|image_pad|>", &[], &[]).is_err());
        assert!(expand_text("x", &[4], &[]).is_err());
        assert!(expand_text("<|video_pad|>", &[], &[]).is_err());
        assert!(expand_text("<|video_pad|>", &[], &[VideoLayout { timestamps: vec![], tokens_per_frame: 1 }]).is_err());
        assert_eq!(expand_text("plain", &[], &[]).unwrap(), "plain");
    }

    #[test]
    fn render_refuses_bad_conversations() {
        let err = |m: &[Message], t: Template| {
            let e = render_with(m, &RenderOptions { template: t, ..Default::default() }).unwrap_err();
            assert!(matches!(e, PolicyError::Input(_)), "{e}");
            e.to_string()
        };
        assert!(err(&[], Template::Instruct).contains("no messages"));
        let e = err(&[Message::new("doctor", vec![Content::text("hi")])], Template::Instruct);
        assert!(e.contains("unknown role \"doctor\""), "{e}");
        let e = err(&[Message::new("system", vec![Content::Image]), Message::user(vec![])], Template::Instruct);
        assert!(e.contains("system message cannot hold an image"), "{e}");
        let e = err(&[Message::user(vec![]), Message::new("assistant", vec![Content::Video])], Template::Thinking);
        assert!(e.contains("assistant message cannot hold a video"), "{e}");
        let e = err(&[Message::user(vec![]), Message::system("late")], Template::Instruct);
        assert!(e.contains("must come first"), "{e}");
        assert!(render_with(&[Message::user(vec![]), Message::system("late")], &RenderOptions { template: Template::Thinking, ..Default::default() }).is_ok());
        let e = err(&[Message::user(vec![]).with_reasoning("r")], Template::Thinking);
        assert!(e.contains("only assistant messages carry reasoning"), "{e}");
        let call = ToolCall { name: "f".into(), arguments: ToolArguments::Json("{bad".into()) };
        let e = err(&[Message::user(vec![]), Message::assistant("").with_tool_calls(vec![call])], Template::Instruct);
        assert!(e.contains("tool call `f`"), "{e}");
        let e = render_with(&[Message::user(vec![])], &RenderOptions { tools: vec!["nope".into()], ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("tool 0"), "{e}");
    }

    #[test]
    fn messages_from_json_errors_name_the_place() {
        let e = messages_from_json(r#"[{"role": "user", "content": [{"type": "audio"}]}]"#).unwrap_err().to_string();
        assert!(e.contains("message 0") && e.contains("content item 0") && e.contains("audio"), "{e}");
        let e = messages_from_json(r#"[{"content": "x"}]"#).unwrap_err().to_string();
        assert!(e.contains("no `role`"), "{e}");
        let e = messages_from_json(r#"{"role": "user"}"#).unwrap_err().to_string();
        assert!(e.contains("array"), "{e}");
        let e = messages_from_json(r#"[{"role": "assistant", "tool_calls": [{"name": "f"}]}]"#).unwrap_err().to_string();
        assert!(e.contains("no `arguments`"), "{e}");
        let m = messages_from_json(r#"[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}, {"video": "v.mp4"}, {"type": "text", "text": "t"}]}]"#).unwrap();
        assert_eq!(m[0].content, vec![Content::Image, Content::Video, Content::text("t")]);
    }
}
