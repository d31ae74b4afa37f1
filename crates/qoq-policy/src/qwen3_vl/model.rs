//! `Qwen3VLForConditionalGeneration`: the vision tower and the text decoder joined by
//! placeholder scattering, interleaved multimodal rope and DeepStack.

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::config::Qwen3VLConfig;
use super::rope_index::rope_index;
use super::vision::VisionModel;
use crate::chat::Template;
use crate::ecg::{self, EcgEncoderConfig, EcgInit, TimeSeriesEmbedding};
use crate::layers::decoder::TextModel;
use crate::layers::rope::{inverse_frequencies, MropeLayout};
use crate::layers::{id_rows, position_ids, scatter};
use crate::policy::{
    Embedded, Family, Inputs, ModuleGroup, Policy, PromptFormat, SpecialTokens, VisionFn, VisionTower,
};
use crate::weights::{self, ExtraTensors};
use crate::PolicyError;

#[derive(Debug)]
pub struct Qwen3VL {
    pub config: Qwen3VLConfig,
    pub vs: nn::VarStore,
    visual: VisionModel,
    language_model: TextModel,
    lm_head: Option<nn::Linear>,
    inv_freq: Tensor,
    mrope: MropeLayout,
    tokens: SpecialTokens,
    /// Checkpoint tensors this family does not use, kept for export.
    extra: ExtraTensors,
    /// `time_series_embedding`: the ECG encoder and its projection, when present.
    time_series_embedding: Option<TimeSeriesEmbedding>,
}

impl Qwen3VL {
    /// A model with freshly initialised weights on `device` (f32).
    pub fn new(config: &Qwen3VLConfig, device: Device) -> Result<Self, PolicyError> {
        config.validate().map_err(PolicyError::Checkpoint)?;
        weights::check_device(device)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let t = &config.text_config;
        let visual = VisionModel::new(&root / "model" / "visual", &config.vision_config);
        let language_model = TextModel::new(&root / "model" / "language_model", &config.decoder_config());
        let lm_head = (!config.tie_word_embeddings).then(|| {
            nn::linear(
                &root / "lm_head",
                t.hidden_size,
                t.vocab_size,
                nn::LinearConfig { bias: false, ..Default::default() },
            )
        });
        let inv_freq = inverse_frequencies(t.rope_theta, t.head_dim).to_device(device);
        let mrope = MropeLayout::interleaved(t.mrope_section, t.head_dim / 2);
        let tokens = SpecialTokens::qwen(
            config.image_token_id,
            config.video_token_id,
            config.vision_start_token_id,
            config.vision_end_token_id,
        );
        Ok(Self {
            config: config.clone(),
            vs,
            visual,
            language_model,
            lm_head,
            inv_freq,
            mrope,
            tokens,
            extra: ExtraTensors::default(),
            time_series_embedding: None,
        })
    }

    /// Load a Hugging Face checkpoint folder (`config.json` + safetensors weights).
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<Self, PolicyError> {
        let path = dir.join("config.json");
        let value = weights::read_json(&path)?;
        let config = Qwen3VLConfig::from_json(&value)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        let mut model = Self::new(&config, device)?;
        let t = &config.text_config;
        model.time_series_embedding = ecg::for_checkpoint(
            &model.vs,
            &mut model.tokens,
            &value,
            dir,
            Family::Qwen3Vl,
            t.hidden_size,
            t.vocab_size,
        )?;
        let mut unused = weights::load_into(&model.vs.variables(), dir, &|name| name.to_string())?;
        // A tied head has no weight of its own; a stray copy in the file is not kept.
        unused.retain(|n| !(config.tie_word_embeddings && n == "lm_head.weight"));
        model.extra = ExtraTensors::read(dir, unused, Family::Qwen3Vl)?;
        Ok(model)
    }

    /// Save as a Hugging Face checkpoint folder: `config.json` (5.x serialisation) and the
    /// weights under their transformers names, in their current dtype; sharded above
    /// `max_shard_bytes` (transformers' default is 5 GB). A tied model writes no `lm_head`.
    pub fn save_pretrained(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        tensors.extend(self.extra.tensors());
        weights::save(&tensors, dir, max_shard_bytes)?;
        Policy::save_config(self, dir)
    }
}

impl Policy for Qwen3VL {
    fn family(&self) -> Family {
        Family::Qwen3Vl
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.tokens
    }

    fn prompt_format(&self) -> PromptFormat {
        PromptFormat { template: Template::Instruct, timestamped_video: true }
    }

    fn module_group(&self, name: &str) -> ModuleGroup {
        if let Some(group) = ecg::module_group(name) {
            return group;
        }
        match name.strip_prefix("model.visual.") {
            Some(rest) if rest.starts_with("merger.") || rest.starts_with("deepstack_merger_list.") => {
                ModuleGroup::Merger
            }
            Some(_) => ModuleGroup::VisionTower,
            None => ModuleGroup::Llm,
        }
    }

    fn text_model(&self) -> &TextModel {
        &self.language_model
    }

    fn vision_tower(&self) -> &dyn VisionTower {
        &self.visual
    }

    fn ecg(&self) -> Option<&TimeSeriesEmbedding> {
        self.time_series_embedding.as_ref()
    }

    fn add_ecg(&mut self, init: &EcgInit, sizes: Option<EcgEncoderConfig>) -> Result<(), PolicyError> {
        let t = &self.config.text_config;
        let (hidden, vocab) = (t.hidden_size, t.vocab_size);
        ecg::attach(
            &mut self.time_series_embedding,
            &mut self.tokens,
            &self.vs,
            Family::Qwen3Vl,
            init,
            sizes,
            hidden,
            vocab,
        )
    }

    fn embed_with(&self, inputs: &Inputs<'_>, tower: &mut VisionFn<'_>) -> Result<Embedded, PolicyError> {
        let device = self.device();
        let (ids, mask) = inputs.ids_and_mask(device)?;
        let c = &self.config;
        let mut embeds = self.language_model.embed_tokens.forward(&ids);
        let mut injections = Vec::new();
        let media = [
            (inputs.pixel_values, &inputs.image_grids, c.image_token_id, "image"),
            (inputs.pixel_values_videos, &inputs.video_grids, c.video_token_id, "video"),
        ];
        for (pixels, grids, token, what) in media {
            let Some(pixels) = pixels else { continue };
            let (merged, deepstack) = tower(&pixels.to_device(device), grids)?;
            let positions = ids.eq(token);
            embeds = scatter(&embeds, &positions, &merged, what)?;
            injections.push((positions, deepstack));
        }
        embeds = TimeSeriesEmbedding::scatter_into(self.ecg(), &ids, embeds, inputs.ecg_signals)?;
        // Multimodal rope positions from the ids, pads excluded.
        let (id_rows, mask_rows) = id_rows(&ids, &mask)?;
        let merge = c.vision_config.spatial_merge_size;
        let index = rope_index(
            &id_rows,
            &mask_rows,
            &inputs.image_grids,
            &inputs.video_grids,
            c.image_token_id,
            c.video_token_id,
            merge,
        )?;
        let (positions, next_position) = position_ids(&index, &mask_rows, device);
        Ok(Embedded { embeds, positions, key_valid: mask.ne(0), next_position, injections })
    }

    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        self.mrope.cos_sin(positions, &self.inv_freq)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        self.language_model.logits(self.lm_head.as_ref(), hidden)
    }

    fn save_pretrained(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
        Qwen3VL::save_pretrained(self, dir, max_shard_bytes)
    }

    fn save_config(&self, dir: &Path) -> Result<(), PolicyError> {
        let mut config = self.config.to_json();
        if let Some(ts) = &self.time_series_embedding {
            ts.config().write_json(&mut config);
        }
        weights::write_json(&dir.join("config.json"), &config)
    }

    fn extra_tensors(&self) -> Vec<(String, Tensor)> {
        self.extra.tensors().collect()
    }
}
