//! The policy interface the trainer, generation, scoring, export, `diagnose` and
//! validation are written against, whatever the model family.
//!
//! A family (a folder: `qwen3_vl/`, `qwen2_5_vl/`) implements [`Policy`]'s required
//! methods: how a prompt batch becomes embeddings and rope positions ([`Policy::embed`]),
//! its rope layout, its head, its module groups, its special tokens and its checkpoint
//! layout. The forward itself is written once, here, one decoder layer at a time
//! ([`Policy::forward_hidden`]), on the shared [`TextModel`], so a caller that needs to
//! drive the layers itself (activation recomputation, layer-wise parameter gathering)
//! reaches the same pieces: [`Policy::embed`], [`TextModel::layers`], [`Embedded::inject`],
//! the final norm and [`Policy::logits`].
//!
//! ```no_run
//! use qoq_policy::{load_policy, Inputs, Policy, SamplingConfig};
//! let policy = load_policy(std::path::Path::new("data/tiny-qwen3-vl"), tch::Device::Cpu)?;
//! let ids = tch::Tensor::from_slice(&[151644i64, 872, 198, 9707, 151645]).view([1, 5]);
//! let inputs = Inputs { input_ids: Some(&ids), ..Default::default() };
//! let mut sampling = SamplingConfig::qwen_default(policy.special_tokens());
//! sampling.max_new_tokens = 8;
//! let rollouts = policy.generate(&inputs, &sampling)?;
//! # Ok::<(), qoq_policy::PolicyError>(())
//! ```

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use qoq_data::preprocess::ImageProcessorConfig;

use crate::chat::Template;
use crate::ecg::{EcgEncoderConfig, EcgInit, TimeSeriesEmbedding};
use crate::generate::{Rollouts, SamplingConfig};
use crate::layers::decoder::TextModel;
use crate::layers::kv_cache::DecodeState;
use crate::layers::rope::Grid;
use crate::layers::{add_at_mask, additive_mask, causal_mask};
use crate::PolicyError;

/// A prompt batch: ids and mask `[B, L]` (left padding: mask 0), and the media in the order
/// their placeholders appear (row by row).
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub input_ids: Option<&'a Tensor>,
    pub attention_mask: Option<&'a Tensor>,
    pub pixel_values: Option<&'a Tensor>,
    pub image_grids: Vec<Grid>,
    pub pixel_values_videos: Option<&'a Tensor>,
    pub video_grids: Vec<Grid>,
    /// Seconds per temporal patch of each video (Qwen2.5-VL's `second_per_grid_ts`; 1 when
    /// empty). Qwen3-VL places frames by their time stamp text instead and ignores it.
    pub video_seconds_per_grid: Vec<f64>,
    /// Preprocessed ECGs `[n, 8, 2500]` (`qoq_data::preprocess::preprocess_ecg`), one per
    /// `<|time_series_pad|>` of the prompts, in order; the policy's ECG encoder embeds them.
    pub ecg_signals: Option<&'a Tensor>,
}

impl Inputs<'_> {
    /// The same media with other ids and mask (e.g. prompt + response for scoring).
    pub fn with_ids<'b>(&'b self, input_ids: &'b Tensor, attention_mask: &'b Tensor) -> Inputs<'b> {
        Inputs {
            input_ids: Some(input_ids),
            attention_mask: Some(attention_mask),
            pixel_values: self.pixel_values,
            image_grids: self.image_grids.clone(),
            pixel_values_videos: self.pixel_values_videos,
            video_grids: self.video_grids.clone(),
            video_seconds_per_grid: self.video_seconds_per_grid.clone(),
            ecg_signals: self.ecg_signals,
        }
    }

    /// The ids on `device` and the mask (ones when absent).
    pub fn ids_and_mask(&self, device: Device) -> Result<(Tensor, Tensor), PolicyError> {
        let ids = self.input_ids.ok_or_else(|| PolicyError::Input("input_ids are required".into()))?.to_device(device);
        let (b, l) = ids.size2()?;
        let mask = match self.attention_mask {
            Some(m) => m.to_device(device),
            None => Tensor::ones([b, l], (Kind::Int64, device)),
        };
        Ok((ids, mask))
    }
}

/// The model families this crate implements, by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `qwen3_vl`: Qwen3-VL (QoQ-Med3-VL-8B, Qwen3-VL-8B-MIMIC).
    Qwen3Vl,
    /// `qwen2_5_vl`: Qwen2.5-VL (QoQ-Med-VL-7B).
    Qwen25Vl,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Qwen3Vl, Family::Qwen25Vl];

    /// The image processor of the family's released checkpoints.
    pub fn processor_defaults(self) -> ImageProcessorConfig {
        match self {
            Family::Qwen3Vl => ImageProcessorConfig::default(),
            Family::Qwen25Vl => ImageProcessorConfig::qwen2_5_vl(),
        }
    }

    /// The family of the checkpoint folder `dir` (its `config.json`'s `model_type`).
    pub fn of_checkpoint(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("config.json");
        let value = crate::weights::read_json(&path)?;
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        Self::from_model_type(model_type).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// The image processor of the checkpoint in `dir`: its `preprocessor_config.json` over
    /// the family's defaults, or the defaults when it has none.
    pub fn processor_config(self, dir: &Path) -> Result<ImageProcessorConfig, PolicyError> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(self.processor_defaults());
        }
        ImageProcessorConfig::from_json_file_over(&path, self.processor_defaults())
            .map_err(|e| PolicyError::Checkpoint(e.to_string()))
    }

    /// The id `<|time_series_pad|>` gets when a model without an ECG path is given one:
    /// QoQ-Med's 151665 for Qwen2.5-VL (the first id after its tokenizer's added tokens);
    /// for Qwen3-VL, whose 151665 is `<tool_response>`, 151669, the first free row after
    /// `</think>` (151668) in its 151,936-row embedding.
    pub fn default_time_series_token_id(self) -> i64 {
        match self {
            Family::Qwen3Vl => 151_669,
            Family::Qwen25Vl => 151_665,
        }
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Qwen3Vl => "qwen3_vl",
            Family::Qwen25Vl => "qwen2_5_vl",
        }
    }

    /// The family of a `model_type`; the error lists the supported ones.
    pub fn from_model_type(model_type: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|f| f.model_type()).collect();
            format!("model_type `{model_type}` is not supported; supported: {}", known.join(", "))
        })
    }
}

/// Groups of parameters that stages freeze or train together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleGroup {
    /// The vision tower's patch embedding and blocks.
    VisionTower,
    /// The vision merger(s) into the text width (DeepStack mergers included).
    Merger,
    /// The language model: embeddings, decoder layers, final norm, head.
    Llm,
    /// A time-series (ECG) encoder.
    EcgEncoder,
    /// Its projection into the text width.
    EcgProjection,
}

impl ModuleGroup {
    pub const ALL: [ModuleGroup; 5] = [
        ModuleGroup::VisionTower,
        ModuleGroup::Merger,
        ModuleGroup::Llm,
        ModuleGroup::EcgEncoder,
        ModuleGroup::EcgProjection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModuleGroup::VisionTower => "vision_tower",
            ModuleGroup::Merger => "merger",
            ModuleGroup::Llm => "llm",
            ModuleGroup::EcgEncoder => "ecg_encoder",
            ModuleGroup::EcgProjection => "ecg_projection",
        }
    }
}

/// The token ids a family's prompts and generation rely on (from its config and tokenizer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Generation ends after one of these (`<|im_end|>`, `<|endoftext|>`).
    pub stop: Vec<i64>,
    /// Never sampled: the media placeholders and their delimiters.
    pub banned: Vec<i64>,
    /// Left padding of prompt batches.
    pub pad: i64,
    pub image: i64,
    pub video: i64,
    pub vision_start: i64,
    pub vision_end: i64,
    /// `<|time_series_pad|>`, when the model has an ECG path.
    pub time_series: Option<i64>,
}

impl SpecialTokens {
    /// Qwen's ids (the same in Qwen2, 2.5 and 3): stop at `<|im_end|>` 151645 and
    /// `<|endoftext|>` 151643 (also the pad), placeholders from the model config.
    pub fn qwen(image: i64, video: i64, vision_start: i64, vision_end: i64) -> Self {
        Self {
            stop: vec![151_645, 151_643],
            banned: vec![image, video, vision_start, vision_end],
            pad: 151_643,
            image,
            video,
            vision_start,
            vision_end,
            time_series: None,
        }
    }

    /// The ECG placeholder: never sampled.
    pub fn set_time_series(&mut self, id: i64) {
        self.banned.retain(|&b| Some(b) != self.time_series);
        self.time_series = Some(id);
        self.banned.push(id);
    }

    /// Stop and pad ids looked up in `tokenizer` (a tiny test vocabulary has its own).
    pub fn with_tokenizer(mut self, tokenizer: &crate::chat::Tokenizer) -> Self {
        let end = tokenizer.token_id("<|endoftext|>").map(i64::from);
        self.stop = std::iter::once(i64::from(tokenizer.im_end_id())).chain(end).collect();
        if let Some(end) = end {
            self.pad = end;
        }
        self
    }
}

/// How a family's prompts are written: its chat template and how videos are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptFormat {
    pub template: Template,
    /// Qwen3-VL writes each temporal patch as `<t seconds><|vision_start|>pads<|vision_end|>`;
    /// Qwen2.5-VL one contiguous run of pads per video.
    pub timestamped_video: bool,
}

/// A batch after the family's input stage: what the shared decoder layers consume.
#[derive(Debug)]
pub struct Embedded {
    /// `[B, L, hidden]`, media scattered at their placeholders.
    pub embeds: Tensor,
    /// Multimodal rope positions `[3, B, L]`.
    pub positions: Tensor,
    /// `[B, L]` true for real (non-pad) tokens.
    pub key_valid: Tensor,
    /// Each row's first decode position.
    pub next_position: Vec<i64>,
    /// Features added after decoder layers (DeepStack): `(positions [B, L], one feature
    /// [n, hidden] per layer from the first)`.
    pub injections: Vec<(Tensor, Vec<Tensor>)>,
}

impl Embedded {
    /// `x` after decoder layer `layer` plus whatever the family injects there.
    pub fn inject(&self, layer: usize, mut x: Tensor) -> Tensor {
        for (positions, features) in &self.injections {
            if let Some(feature) = features.get(layer) {
                x = add_at_mask(&x, positions, feature);
            }
        }
        x
    }
}

/// The vision tower of a family, block by block.
pub trait VisionTower {
    /// Patch embedding (and learned positions), rope tables and attention segments.
    fn prepare(&self, pixel_values: &Tensor, grids: &[Grid]) -> VisionPass;
    fn num_blocks(&self) -> usize;
    /// Block `i`; returns the new hidden states and, where the family taps this block
    /// (DeepStack), a merged feature for the text layers.
    fn block(&self, i: usize, x: &Tensor, pass: &VisionPass) -> (Tensor, Option<Tensor>);
    /// The final merger, in the processor's token order.
    fn merge(&self, x: &Tensor, pass: &VisionPass) -> Tensor;

    /// The whole tower: merged tokens `[N / merge², out]` and the tapped features.
    fn forward(&self, pixel_values: &Tensor, grids: &[Grid]) -> (Tensor, Vec<Tensor>) {
        let pass = self.prepare(pixel_values, grids);
        let mut x = pass.x.shallow_clone();
        let mut taps = Vec::new();
        for i in 0..self.num_blocks() {
            let (next, tap) = self.block(i, &x, &pass);
            x = next;
            taps.extend(tap);
        }
        (self.merge(&x, &pass), taps)
    }
}

/// A vision forward's state shared by its blocks.
#[derive(Debug)]
pub struct VisionPass {
    /// Block input `[N, C]` (in the tower's internal token order).
    pub x: Tensor,
    pub cos: Tensor,
    pub sin: Tensor,
    /// Full-attention segments (one per image / video frame), in patches.
    pub frames: Vec<i64>,
    /// Window segments (Qwen2.5-VL), in patches; empty for towers without windows.
    pub windows: Vec<i64>,
    /// The window order of merge units (Qwen2.5-VL); the merger undoes it.
    pub window_index: Option<Tensor>,
}

/// A vision pass as [`Policy::embed_with`] takes it: (pixel values, grids) -> (merged
/// tokens, tapped features).
pub type VisionFn<'a> = dyn FnMut(&Tensor, &[Grid]) -> Result<(Tensor, Vec<Tensor>), PolicyError> + 'a;

/// What the trainer and the tools use of a model, whatever its family.
pub trait Policy: Send {
    fn family(&self) -> Family;
    /// The parameters, under their in-memory (transformers module) names.
    fn var_store(&self) -> &nn::VarStore;
    fn var_store_mut(&mut self) -> &mut nn::VarStore;
    fn special_tokens(&self) -> &SpecialTokens;
    fn prompt_format(&self) -> PromptFormat;
    /// The group of the parameter `name` (a [`Self::var_store`] name).
    fn module_group(&self, name: &str) -> ModuleGroup;
    /// Embeddings, decoder layers and final norm.
    fn text_model(&self) -> &TextModel;
    fn vision_tower(&self) -> &dyn VisionTower;
    /// The ECG path (`time_series_embedding`), when the model has one.
    fn ecg(&self) -> Option<&TimeSeriesEmbedding>;
    /// Gives a model without an ECG path one: the encoder from `init` (`sizes` for a
    /// random one; ECG-JEPA's by default), a fresh projection, and
    /// [`Family::default_time_series_token_id`] as the placeholder, written to
    /// `config.json` on save. An error when the model already has one.
    fn add_ecg(&mut self, init: &EcgInit, sizes: Option<EcgEncoderConfig>) -> Result<(), PolicyError>;
    /// Input stage: token embeddings with media scattered in, rope positions, injections.
    fn embed(&self, inputs: &Inputs<'_>) -> Result<Embedded, PolicyError> {
        self.embed_with(inputs, &mut |pixels, grids| Ok(self.vision_tower().forward(pixels, grids)))
    }
    /// [`Self::embed`] with each media's vision pass made by `tower` (pixel values on the
    /// device, their grids) -> (merged tokens, tapped features): the update runs the tower
    /// block by block through it, keeping each block's input for recomputation.
    fn embed_with(&self, inputs: &Inputs<'_>, tower: &mut VisionFn<'_>) -> Result<Embedded, PolicyError>;
    /// Rope tables for position ids `[3, B, L]`: cos and sin `[B, L, head_dim]` (f32).
    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor);
    /// Vocabulary logits of final hidden states (`lm_head`, or the tied embedding).
    fn logits(&self, hidden: &Tensor) -> Tensor;
    /// Save as a Hugging Face checkpoint folder in the layout the model was loaded from,
    /// sharded above `max_shard_bytes`; tensors the checkpoint carried that the family
    /// does not use are written back too.
    fn save_pretrained(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError>;
    /// The parts of [`Self::save_pretrained`] for a writer that assembles the weights
    /// itself (sharded parameters, each rank writing its own file): `config.json` alone.
    fn save_config(&self, dir: &Path) -> Result<(), PolicyError>;
    /// The name a [`Self::var_store`] variable has in the checkpoint layout it came from.
    fn checkpoint_name(&self, name: &str) -> String {
        name.to_string()
    }
    /// Tensors the checkpoint carried that the family does not use (written back on save).
    fn extra_tensors(&self) -> Vec<(String, Tensor)>;

    fn device(&self) -> Device {
        self.var_store().device()
    }

    /// Convert every weight to `kind` (e.g. `Kind::BFloat16` for rollouts).
    fn set_kind(&mut self, kind: Kind) {
        self.var_store_mut().set_kind(kind);
    }

    /// Forward the prompt to the final norm, one decoder layer at a time: hidden states
    /// `[B, L, hidden]` and the state to decode from. Callers that need logits at a few
    /// positions only apply [`Self::logits`] to those.
    fn forward_hidden(&self, inputs: &Inputs<'_>) -> Result<(Tensor, DecodeState), PolicyError> {
        let e = self.embed(inputs)?;
        let kind = e.embeds.kind();
        let (cos, sin) = self.rope(&e.positions);
        let (cos, sin) = (cos.to_kind(kind), sin.to_kind(kind));
        let mask = causal_mask(&e.key_valid, kind);
        let text = self.text_model();
        let mut state = DecodeState::new(text.layers.len(), e.key_valid.shallow_clone(), e.next_position.clone());
        let mut x = e.embeds.shallow_clone();
        for (i, layer) in text.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, &mask, state.layer(i));
            x = e.inject(i, x);
        }
        Ok((text.norm.forward(&x), state))
    }

    /// Forward the prompt; returns logits `[B, L, vocab]` and the state to decode from.
    fn prefill(&self, inputs: &Inputs<'_>) -> Result<(Tensor, DecodeState), PolicyError> {
        let (hidden, state) = self.forward_hidden(inputs)?;
        Ok((self.logits(&hidden), state))
    }

    /// One decode step: `tokens` [B] -> logits `[B, vocab]`. No vision pass, no injection.
    fn decode_step(&self, state: &mut DecodeState, tokens: &Tensor) -> Result<Tensor, PolicyError> {
        let device = self.device();
        let b = tokens.size1()?;
        let text = self.text_model();
        let embeds = text.embed_tokens.forward(&tokens.to_device(device).view([b, 1]));
        let positions =
            Tensor::from_slice(state.next_positions()).to_device(device).view([1, b, 1]).expand([3, b, 1], false);
        let (cos, sin) = self.rope(&positions);
        let kind = embeds.kind();
        let (cos, sin) = (cos.to_kind(kind), sin.to_kind(kind));
        state.key_valid = Tensor::cat(&[&state.key_valid, &Tensor::ones([b, 1], (Kind::Bool, device))], 1);
        let mask = additive_mask(&state.key_valid.unsqueeze(1), kind);
        let mut x = embeds;
        for (i, layer) in text.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, &mask, state.layer(i));
        }
        for p in &mut state.next_position {
            *p += 1;
        }
        Ok(self.logits(&text.norm.forward(&x)).squeeze_dim(1))
    }

    /// Sample responses for every prompt row of `inputs` ([`crate::generate::generate`]).
    fn generate(&self, inputs: &Inputs<'_>, config: &SamplingConfig) -> Result<Rollouts, PolicyError> {
        crate::generate::generate(self, inputs, config)
    }

    /// Per-token log-probs and entropies of `responses` ([`crate::update::score`]), the
    /// logits `chunk_tokens` rows at a time.
    fn score(
        &self,
        inputs: &Inputs<'_>,
        responses: &[Vec<i64>],
        temperature: f64,
        chunk_tokens: i64,
    ) -> Result<(Tensor, Tensor), PolicyError> {
        crate::update::score(self, inputs, responses, temperature, chunk_tokens)
    }

    /// Parameters that train (not frozen), sorted by name.
    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            self.var_store().variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Stop gradients of every parameter in `groups`.
    fn freeze(&self, groups: &[ModuleGroup]) {
        for (name, t) in self.var_store().variables() {
            if groups.contains(&self.module_group(&name)) {
                let _ = t.shallow_clone().set_requires_grad(false);
            }
        }
    }
}

/// Load a Hugging Face checkpoint folder of any supported family, chosen by
/// `config.json`'s `model_type`.
pub fn load_policy(dir: &Path, device: Device) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match Family::of_checkpoint(dir)? {
        Family::Qwen3Vl => Box::new(crate::qwen3_vl::Qwen3VL::from_pretrained(dir, device)?),
        Family::Qwen25Vl => Box::new(crate::qwen2_5_vl::Qwen25VL::from_pretrained(dir, device)?),
    })
}
