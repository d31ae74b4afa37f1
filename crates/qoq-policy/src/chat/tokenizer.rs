//! Qwen's byte-level BPE tokenizer, with the special ids the prompts use.

use std::collections::HashSet;
use std::path::Path;

use super::{input, IMAGE_PAD, IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START};
use crate::PolicyError;

/// Qwen's byte-level BPE tokenizer (151,643 tokens plus 26 added ones, `<|endoftext|>` 151643
/// to `</think>` 151668), read from a Hugging Face `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    added: HashSet<u32>,
    pub(super) image_pad: u32,
    pub(super) video_pad: u32,
    pub(super) vision_start: u32,
    pub(super) vision_end: u32,
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

    /// The tokenizer with `<|time_series_pad|>` at `id`, the model's `time_series_token_id`.
    /// A checkpoint's tokenizer usually lacks it (QoQ-Med adds it at run time): it is added
    /// as a special token, which takes the first id after the vocabulary and added tokens
    /// (151665 in Qwen2.5's, 151669 in Qwen3's), and that must be `id`.
    pub fn with_time_series_token(mut self, id: i64) -> Result<Self, PolicyError> {
        let token = crate::ecg::TIME_SERIES_PAD;
        let found = match self.inner.token_to_id(token) {
            Some(found) => found,
            None => {
                self.inner.add_special_tokens(&[tokenizers::AddedToken::from(token, true)]);
                self.inner.token_to_id(token).ok_or_else(|| input(format!("adding `{token}` failed")))?
            }
        };
        if i64::from(found) != id {
            return Err(PolicyError::Checkpoint(format!(
                "the tokenizer puts `{token}` at id {found} but the model's time_series_token_id is {id}; add \
                 {{\"id\": {id}, \"content\": \"{token}\", \"special\": true, ...}} to tokenizer.json's added_tokens, \
                 or set time_series_token_id to {found} in config.json"
            )));
        }
        self.added.insert(found);
        Ok(self)
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
