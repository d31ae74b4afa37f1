//! The Qwen3-VL chat template and tokenizer (filled in by the chat-template work).
