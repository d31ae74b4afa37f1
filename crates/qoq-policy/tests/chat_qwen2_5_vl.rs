//! Qwen2.5-VL prompts against transformers 5.24 (tests/fixtures/qwen2_5_vl/chat, made by
//! tools/make_qwen25vl_fixtures.py): the Qwen2-VL chat template rendered byte-identically,
//! the processor's placeholder expansion (one run of pads per video), and the ids of
//! Qwen2.5's own tokenizer (setup.sh derives it as .qwen2.5-tokenizer), where `<think>` is
//! ordinary text.

use std::path::PathBuf;

use qoq_policy::chat::{self, expand_text, messages_from_json, RenderOptions, Template, Tokenizer, VideoLayout};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/qwen2_5_vl/chat/cases.json")).unwrap())
        .unwrap()
}

fn tokenizer() -> Tokenizer {
    let path = root().join(".qwen2.5-tokenizer/tokenizer.json");
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{e}: run `bash tools/setup.sh` first"))
}

fn media(case: &serde_json::Value) -> (Vec<usize>, Vec<VideoLayout>) {
    let images =
        case["media"]["images"].as_array().unwrap().iter().map(|i| i["tokens"].as_u64().unwrap() as usize).collect();
    let videos = case["media"]["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let g: Vec<usize> =
                v["grid_thw"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            VideoLayout::contiguous(g[0], g[1] * g[2] / 4)
        })
        .collect();
    (images, videos)
}

#[test]
fn template_renders_byte_identically() {
    let f = fixture();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let messages = messages_from_json(case["messages_json"].as_str().unwrap()).unwrap();
        let opts = RenderOptions {
            template: Template::Qwen2Vl,
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            add_vision_id: case["add_vision_id"].as_bool().unwrap(),
            ..Default::default()
        };
        let rendered = chat::render_with(&messages, &opts).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{name}");
        let (images, videos) = media(case);
        if let Some(expanded) = case["expanded_text"].as_str() {
            assert_eq!(expand_text(&rendered, &images, &videos).unwrap(), expanded, "{name}: expanded");
        }
    }
}

#[test]
fn ids_come_from_qwen25s_own_tokenizer() {
    let f = fixture();
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 151_665);
    assert_eq!(tok.token_id("<think>"), None);
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages = messages_from_json(case["messages_json"].as_str().unwrap()).unwrap();
        let opts = RenderOptions {
            template: Template::Qwen2Vl,
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            add_vision_id: case["add_vision_id"].as_bool().unwrap(),
            ..Default::default()
        };
        let want = |key: &str| -> Vec<u32> {
            case[key].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let rendered = chat::render_with(&messages, &opts).unwrap();
        assert_eq!(tok.encode(&rendered).unwrap(), want("rendered_ids"), "{name}: rendered ids");
        let (images, videos) = media(case);
        if case.get("input_ids").is_some() {
            let ids = chat::encode_conversation(&tok, &messages, &opts, &images, &videos).unwrap();
            assert_eq!(ids, want("input_ids"), "{name}: processor ids");
        }
    }
    for t in f["tokenize"].as_array().unwrap() {
        let ids: Vec<u32> = t["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(t["text"].as_str().unwrap()).unwrap(), ids, "{}", t["text"]);
    }
}

#[test]
fn inputs_the_template_would_drop_are_refused() {
    let opts = RenderOptions { template: Template::Qwen2Vl, tools: vec!["{}".into()], ..Default::default() };
    let err =
        chat::render_with(&[chat::Message::user(vec![chat::Content::text("hi")])], &opts).unwrap_err().to_string();
    assert!(err.contains("has no tools"), "{err}");
    let opts = RenderOptions { template: Template::Qwen2Vl, ..Default::default() };
    let err = chat::render_with(&[chat::Message::assistant("a").with_reasoning("r")], &opts).unwrap_err().to_string();
    assert!(err.contains("message 0") && err.contains("reasoning"), "{err}");
    assert!(chat::render_with(&[], &opts).is_err());
}
