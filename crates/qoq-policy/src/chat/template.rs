//! The chat templates, reproduced in plain Rust: Qwen3-VL's Instruct and Thinking ones, and
//! Qwen2-VL's (which Qwen2.5-VL checkpoints carry).

use std::fmt::Write as _;

use super::input;
use super::messages::{Content, Message, ToolArguments, ToolCall};
use super::python_json::python_json;
use crate::PolicyError;

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
    /// `Qwen/Qwen2-VL-*-Instruct`'s and `Qwen/Qwen2.5-VL-*-Instruct`'s: a default system prompt
    /// when the first message is not a system one, every role written the same way, no tools
    /// and no reasoning; generation prompt `<|im_start|>assistant\n`.
    Qwen2Vl,
}

/// The system turn the Qwen2-VL template adds when the conversation opens without one.
pub const QWEN2_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

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
    if opts.template == Template::Qwen2Vl {
        return render_qwen2(messages, opts);
    }
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
                Template::Qwen2Vl => unreachable!("rendered by render_qwen2"),
                Template::Thinking => {
                    let mut content = plain_text(m);
                    let reasoning = match &m.reasoning {
                        Some(r) => r.clone(),
                        None if content.contains("</think>") => {
                            let before = content.split("</think>").next().unwrap_or("");
                            let r = before.trim_end_matches('\n').rsplit("<think>").next().unwrap_or("");
                            let r = r.trim_start_matches('\n').to_string();
                            content =
                                content.rsplit("</think>").next().unwrap_or("").trim_start_matches('\n').to_string();
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
            Template::Qwen2Vl => unreachable!("rendered by render_qwen2"),
        });
    }
    Ok(out)
}

/// The Qwen2-VL template. Inputs it would drop silently (tools, tool calls, reasoning)
/// are refused instead.
fn render_qwen2(messages: &[Message], opts: &RenderOptions) -> Result<String, PolicyError> {
    if messages.is_empty() {
        return Err(input("no messages to render"));
    }
    if !opts.tools.is_empty() {
        return Err(input("the Qwen2-VL chat template has no tools"));
    }
    let mut out = String::new();
    let mut count = VisionCount::default();
    for (i, m) in messages.iter().enumerate() {
        if !m.tool_calls.is_empty() || m.reasoning.is_some() {
            return Err(input(format!(
                "message {i}: the Qwen2-VL chat template writes neither tool calls nor reasoning"
            )));
        }
        if i == 0 && m.role != "system" {
            let _ = write!(out, "<|im_start|>system\n{QWEN2_DEFAULT_SYSTEM}<|im_end|>\n");
        }
        let content = render_content(m, &mut count, opts.add_vision_id);
        let _ = write!(out, "<|im_start|>{}\n{content}<|im_end|>\n", m.role);
    }
    if opts.add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
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
                if m.images() + m.videos() + m.time_series() > 0 {
                    let what = match (m.images(), m.videos()) {
                        (0, 0) => "an ECG",
                        (0, _) => "a video",
                        _ => "an image",
                    };
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
            Content::TimeSeries => s.push_str(crate::ecg::TIME_SERIES_PAD),
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
            Content::TimeSeries => s.push_str(crate::ecg::TIME_SERIES_PAD),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(render_with(
            &[Message::user(vec![]), Message::system("late")],
            &RenderOptions { template: Template::Thinking, ..Default::default() }
        )
        .is_ok());
        let e = err(&[Message::user(vec![]).with_reasoning("r")], Template::Thinking);
        assert!(e.contains("only assistant messages carry reasoning"), "{e}");
        let call = ToolCall { name: "f".into(), arguments: ToolArguments::Json("{bad".into()) };
        let e = err(&[Message::user(vec![]), Message::assistant("").with_tool_calls(vec![call])], Template::Instruct);
        assert!(e.contains("tool call `f`"), "{e}");
        let e =
            render_with(&[Message::user(vec![])], &RenderOptions { tools: vec!["nope".into()], ..Default::default() })
                .unwrap_err();
        assert!(e.to_string().contains("tool 0"), "{e}");
    }
}
