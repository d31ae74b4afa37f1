//! Conversations: messages, their content, tool calls, and transformers' JSON form.

use super::input;
use super::python_json::Json;
use crate::PolicyError;

/// One piece of a message's content, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Text(String),
    /// An image: `<|vision_start|><|image_pad|><|vision_end|>` in the prompt.
    Image,
    /// A video: `<|vision_start|><|video_pad|><|vision_end|>` in the prompt.
    Video,
    /// An ECG (QoQ-Med's `{"type": "time-series"}`): one bare `<|time_series_pad|>`, no
    /// wrapper tokens; the policy's ECG encoder fills it.
    TimeSeries,
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
    /// Number of ECGs in the content.
    pub fn time_series(&self) -> usize {
        self.content.iter().filter(|c| matches!(c, Content::TimeSeries)).count()
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
    items
        .iter()
        .enumerate()
        .map(|(i, m)| message_from_json(m).map_err(|e| input(format!("message {i}: {e}"))))
        .collect()
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
    if ty == Some("image") || ty == Some("image_url") || item.get("image").is_some() || item.get("image_url").is_some()
    {
        Ok(Content::Image)
    } else if ty == Some("video") || item.get("video").is_some() {
        Ok(Content::Video)
    } else if ty == Some("time-series") || ty == Some("time_series") {
        Ok(Content::TimeSeries)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_json_errors_name_the_place() {
        let e = messages_from_json(r#"[{"role": "user", "content": [{"type": "audio"}]}]"#).unwrap_err().to_string();
        assert!(e.contains("message 0") && e.contains("content item 0") && e.contains("audio"), "{e}");
        let e = messages_from_json(r#"[{"content": "x"}]"#).unwrap_err().to_string();
        assert!(e.contains("no `role`"), "{e}");
        let e = messages_from_json(r#"{"role": "user"}"#).unwrap_err().to_string();
        assert!(e.contains("array"), "{e}");
        let e =
            messages_from_json(r#"[{"role": "assistant", "tool_calls": [{"name": "f"}]}]"#).unwrap_err().to_string();
        assert!(e.contains("no `arguments`"), "{e}");
        let m = messages_from_json(r#"[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}, {"video": "v.mp4"}, {"type": "text", "text": "t"}]}]"#).unwrap();
        assert_eq!(m[0].content, vec![Content::Image, Content::Video, Content::text("t")]);
        let ts = messages_from_json(
            r#"[{"role": "user", "content": [{"type": "time-series"}, {"type": "text", "text": "q"}]}]"#,
        )
        .unwrap();
        assert_eq!(ts[0].content, vec![Content::TimeSeries, Content::text("q")]);
    }
}
