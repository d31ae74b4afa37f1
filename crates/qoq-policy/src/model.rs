//! `Qwen3VLForConditionalGeneration`: the vision tower and the text decoder joined by
//! placeholder scattering, multimodal rope and DeepStack; prefill and cached decode steps.

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::config::Qwen3VLConfig;
use crate::rope::{inverse_frequencies, rope_index, text_cos_sin, Grid};
use crate::text::{LayerCache, TextModel};
use crate::vision::VisionModel;
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
    /// Embeddings of another modality, `(placeholder token id, [n, hidden])`, scattered at
    /// that token's positions like images are (e.g. the ECG encoder of stage 1).
    pub extra_embeddings: Vec<(i64, Tensor)>,
}

/// Decoding state after a prefill: the KV cache, which keys are real (not padding), and
/// each row's next rope position.
#[derive(Debug)]
pub struct DecodeState {
    caches: Vec<LayerCache>,
    /// `[B, T]` true for real tokens.
    key_valid: Tensor,
    /// Next position per row (all three rope axes are equal after the prompt).
    next_position: Vec<i64>,
}

impl DecodeState {
    /// Rows `index` of the state (e.g. each prompt's row repeated G times for G samples),
    /// so a prompt is encoded once however many responses are sampled from it.
    pub fn select_rows(&self, index: &[i64]) -> DecodeState {
        let device = self.key_valid.device();
        let idx = Tensor::from_slice(index).to_device(device);
        DecodeState {
            caches: self.caches.iter().map(|c| c.select_rows(&idx)).collect(),
            key_valid: self.key_valid.index_select(0, &idx),
            next_position: index.iter().map(|&i| self.next_position[i as usize]).collect(),
        }
    }

    pub fn len(&self) -> i64 {
        self.key_valid.size()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Qwen3VL {
    pub config: Qwen3VLConfig,
    pub vs: nn::VarStore,
    visual: VisionModel,
    language_model: TextModel,
    lm_head: Option<nn::Linear>,
    inv_freq: Tensor,
}

impl Qwen3VL {
    /// A model with freshly initialised weights on `device` (f32).
    pub fn new(config: &Qwen3VLConfig, device: Device) -> Result<Self, PolicyError> {
        config.validate().map_err(PolicyError::Checkpoint)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let t = &config.text_config;
        let visual = VisionModel::new(&root / "model" / "visual", &config.vision_config);
        let language_model = TextModel::new(&root / "model" / "language_model", t);
        let lm_head = (!config.tie_word_embeddings).then(|| {
            nn::linear(&root / "lm_head", t.hidden_size, t.vocab_size, nn::LinearConfig { bias: false, ..Default::default() })
        });
        let inv_freq = inverse_frequencies(t.rope_theta, t.head_dim).to_device(device);
        Ok(Self { config: config.clone(), vs, visual, language_model, lm_head, inv_freq })
    }

    /// Load a Hugging Face checkpoint folder (`config.json` + safetensors weights).
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<Self, PolicyError> {
        let config = Qwen3VLConfig::from_file(&dir.join("config.json"))?;
        let model = Self::new(&config, device)?;
        crate::weights::load_into(&model.vs.variables(), dir)?;
        Ok(model)
    }

    /// Save as a Hugging Face checkpoint folder: `config.json` (5.x serialisation) and the
    /// weights under their transformers names, in their current dtype; sharded above
    /// `max_shard_bytes` (transformers' default is 5 GB). A tied model writes no `lm_head`.
    pub fn save_pretrained(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
        let tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        crate::weights::save(&tensors, dir, max_shard_bytes)?;
        let config = serde_json::to_string_pretty(&self.config.to_json()).expect("JSON values serialise");
        let tmp = dir.join(".config.json.tmp");
        let io = |e: std::io::Error| PolicyError::Checkpoint(format!("{}: {e}", dir.display()));
        std::fs::write(&tmp, config).map_err(io)?;
        std::fs::rename(&tmp, dir.join("config.json")).map_err(io)
    }

    /// Convert every weight to `kind` (e.g. `Kind::BFloat16` for rollouts).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    /// Vocabulary logits of final hidden states (`lm_head`, or the tied embedding).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(&self.language_model.embed_tokens.ws.tr()),
        }
    }

    /// Forward the prompt; returns logits `[B, L, vocab]` and the state to decode from.
    pub fn prefill(&self, inputs: &Inputs<'_>) -> Result<(Tensor, DecodeState), PolicyError> {
        let (hidden, state) = self.forward_hidden(inputs)?;
        Ok((self.logits(&hidden), state))
    }

    /// Forward the prompt to the final norm: hidden states `[B, L, hidden]` and the state to
    /// decode from. Callers that need logits at a few positions only (the last one when
    /// generating, the response when scoring) apply [`Self::logits`] to those.
    pub fn forward_hidden(&self, inputs: &Inputs<'_>) -> Result<(Tensor, DecodeState), PolicyError> {
        let device = self.device();
        let ids = inputs.input_ids.ok_or_else(|| PolicyError::Input("input_ids are required".into()))?.to_device(device);
        let (b, l) = ids.size2()?;
        let mask = match inputs.attention_mask {
            Some(m) => m.to_device(device),
            None => Tensor::ones([b, l], (Kind::Int64, device)),
        };
        let c = &self.config;
        let mut embeds = self.language_model.embed_tokens.forward(&ids);
        let mut deepstack = Vec::new();
        let media = [
            (inputs.pixel_values, &inputs.image_grids, c.image_token_id, "image"),
            (inputs.pixel_values_videos, &inputs.video_grids, c.video_token_id, "video"),
        ];
        for (pixels, grids, token, what) in media {
            let Some(pixels) = pixels else { continue };
            let out = self.visual.forward(&pixels.to_device(device), grids);
            let positions = ids.eq(token);
            embeds = scatter(&embeds, &positions, &out.embeds, what)?;
            deepstack.push((positions, out.deepstack));
        }
        for (token, values) in &inputs.extra_embeddings {
            embeds = scatter(&embeds, &ids.eq(*token), &values.to_device(device), "extra modality")?;
        }

        // Multimodal rope positions from the ids, pads excluded.
        let id_rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&ids.to_device(Device::Cpu))?;
        let mask_rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&mask.to_kind(Kind::Int64).to_device(Device::Cpu))?;
        let merge = c.vision_config.spatial_merge_size;
        let index = rope_index(&id_rows, &mask_rows, &inputs.image_grids, &inputs.video_grids, c.image_token_id, c.video_token_id, merge)?;
        let flat: Vec<i64> = (0..3).flat_map(|axis| index.iter().flat_map(move |r| r.positions[axis].clone())).collect();
        let positions = Tensor::from_slice(&flat).view([3, b, l]).to_device(device);
        let (cos, sin) = text_cos_sin(&positions, &self.inv_freq, c.text_config.mrope_section);

        let key_valid = mask.ne(0);
        let causal = Tensor::ones([l, l], (Kind::Bool, device)).tril(0);
        let allowed = causal.unsqueeze(0).logical_and(&key_valid.unsqueeze(1));
        let additive = additive_mask(&allowed, embeds.kind());
        let mut caches: Vec<LayerCache> = (0..self.language_model.num_layers()).map(|_| LayerCache::default()).collect();
        let hidden = self.language_model.forward(&embeds, &cos.to_kind(embeds.kind()), &sin.to_kind(embeds.kind()), &additive, &mut caches, &deepstack);
        // The first generated token follows the prompt's largest position.
        let next_position =
            index.iter().zip(&mask_rows).map(|(r, m)| m.iter().filter(|&&v| v != 0).count() as i64 + r.delta).collect();
        Ok((hidden, DecodeState { caches, key_valid, next_position }))
    }

    /// One decode step: `tokens` [B] -> logits `[B, vocab]`. No vision pass, no DeepStack.
    pub fn decode_step(&self, state: &mut DecodeState, tokens: &Tensor) -> Result<Tensor, PolicyError> {
        let device = self.device();
        let b = tokens.size1()?;
        let embeds = self.language_model.embed_tokens.forward(&tokens.to_device(device).view([b, 1]));
        let positions = Tensor::from_slice(&state.next_position).to_device(device).view([1, b, 1]).expand([3, b, 1], false);
        let (cos, sin) = text_cos_sin(&positions, &self.inv_freq, self.config.text_config.mrope_section);
        state.key_valid = Tensor::cat(&[&state.key_valid, &Tensor::ones([b, 1], (Kind::Bool, device))], 1);
        let additive = additive_mask(&state.key_valid.unsqueeze(1), embeds.kind());
        let hidden = self.language_model.forward(&embeds, &cos.to_kind(embeds.kind()), &sin.to_kind(embeds.kind()), &additive, &mut state.caches, &[]);
        for p in &mut state.next_position {
            *p += 1;
        }
        Ok(self.logits(&hidden).squeeze_dim(1))
    }
}

/// `[B, L, L]` (or `[B, 1, T]`) allowed -> additive `[B, 1, ., .]`: 0 where allowed, the
/// dtype's minimum elsewhere (as transformers; a fully masked pad row stays finite).
fn additive_mask(allowed: &Tensor, kind: Kind) -> Tensor {
    let min = match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    };
    let zeros = Tensor::zeros(allowed.size(), (kind, allowed.device()));
    zeros.masked_fill(&allowed.logical_not(), min).unsqueeze(1)
}

/// Put `values` [n, hidden] at the rows of `embeds` [B, L, hidden] where `positions` is true.
fn scatter(embeds: &Tensor, positions: &Tensor, values: &Tensor, what: &str) -> Result<Tensor, PolicyError> {
    let found = positions.sum(Kind::Int64).int64_value(&[]);
    let expected = values.size()[0];
    if found != expected {
        return Err(PolicyError::Input(format!(
            "the prompts hold {found} {what} placeholder tokens but the {what} inputs give {expected} embeddings"
        )));
    }
    Ok(embeds.masked_scatter(&positions.unsqueeze(-1), &values.to_kind(embeds.kind())))
}
