//! `Qwen2_5_VLForConditionalGeneration`: the windowed vision tower and a Qwen2 decoder
//! joined by placeholder scattering and sectioned multimodal rope. No DeepStack.

use std::path::Path;

use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::config::Qwen25VLConfig;
use super::rope_index::{rope_index, RopeInputs};
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

/// How a checkpoint spells the parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLayout {
    /// As published and as transformers' `save_pretrained` writes them: `visual.*`,
    /// `model.layers.*`, `model.embed_tokens`, `model.norm`, `lm_head`.
    Published,
    /// The module tree of transformers >= 4.52: `model.visual.*`, `model.language_model.*`.
    InMemory,
}

/// A checkpoint name as its variable (in-memory) name.
pub fn in_memory_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("visual.") {
        return format!("model.visual.{rest}");
    }
    match name.strip_prefix("model.") {
        Some(rest) if !rest.starts_with("language_model.") && !rest.starts_with("visual.") => {
            format!("model.language_model.{rest}")
        }
        _ => name.to_string(),
    }
}

/// A variable name as `layout` spells it.
pub fn checkpoint_name(name: &str, layout: NameLayout) -> String {
    if layout == NameLayout::InMemory {
        return name.to_string();
    }
    if let Some(rest) = name.strip_prefix("model.visual.") {
        return format!("visual.{rest}");
    }
    match name.strip_prefix("model.language_model.") {
        Some(rest) => format!("model.{rest}"),
        None => name.to_string(),
    }
}

#[derive(Debug)]
pub struct Qwen25VL {
    pub config: Qwen25VLConfig,
    pub vs: nn::VarStore,
    visual: VisionModel,
    language_model: TextModel,
    lm_head: Option<nn::Linear>,
    inv_freq: Tensor,
    mrope: MropeLayout,
    tokens: SpecialTokens,
    /// The layout the weights were loaded from (saved back the same way).
    pub layout: NameLayout,
    /// The `config.json` read at load, written back as it was.
    source_config: Option<Value>,
    /// Checkpoint tensors this family does not use.
    extra: ExtraTensors,
    /// `time_series_embedding`: the ECG encoder and its projection, when present.
    time_series_embedding: Option<TimeSeriesEmbedding>,
}

impl Qwen25VL {
    /// A model with freshly initialised weights on `device` (f32), saved in the published layout.
    pub fn new(config: &Qwen25VLConfig, device: Device) -> Result<Self, PolicyError> {
        config.validate().map_err(PolicyError::Checkpoint)?;
        weights::check_device(device)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let t = &config.text_config;
        let visual = VisionModel::new(&root / "model" / "visual", &config.vision_config, config.merger_window());
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
            mrope: MropeLayout::sectioned(t.mrope_section),
            tokens,
            layout: NameLayout::Published,
            source_config: None,
            extra: ExtraTensors::default(),
            time_series_embedding: None,
        })
    }

    /// Load a Hugging Face checkpoint folder, with weights under either name set.
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<Self, PolicyError> {
        let path = dir.join("config.json");
        let value = weights::read_json(&path)?;
        let config = Qwen25VLConfig::from_json(&value)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        let mut model = Self::new(&config, device)?;
        let t = &config.text_config;
        model.time_series_embedding = ecg::for_checkpoint(
            &model.vs,
            &mut model.tokens,
            &value,
            dir,
            Family::Qwen25Vl,
            t.hidden_size,
            t.vocab_size,
        )?;
        // Either name set loads; the one found is the one saved back.
        let saw_in_memory = std::cell::Cell::new(false);
        let rename = |name: &str| {
            if name.starts_with("model.visual.") || name.starts_with("model.language_model.") {
                saw_in_memory.set(true);
            }
            in_memory_name(name)
        };
        let mut unused = weights::load_into(&model.vs.variables(), dir, &rename)?;
        unused.retain(|n| !(config.tie_word_embeddings && n == "lm_head.weight"));
        model.layout = if saw_in_memory.get() { NameLayout::InMemory } else { NameLayout::Published };
        model.source_config = Some(value);
        model.extra = ExtraTensors::read(dir, unused, Family::Qwen25Vl)?;
        Ok(model)
    }

    /// Names of the kept checkpoint tensors this family does not use.
    pub fn extra_tensor_names(&self) -> Vec<&str> {
        self.extra.names()
    }
}

impl Policy for Qwen25VL {
    fn family(&self) -> Family {
        Family::Qwen25Vl
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
        PromptFormat { template: Template::Qwen2Vl, timestamped_video: false }
    }

    fn module_group(&self, name: &str) -> ModuleGroup {
        if let Some(group) = ecg::module_group(name) {
            return group;
        }
        match name.strip_prefix("model.visual.") {
            Some(rest) if rest.starts_with("merger.") => ModuleGroup::Merger,
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
            Family::Qwen25Vl,
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
        let media = [
            (inputs.pixel_values, &inputs.image_grids, c.image_token_id, "image"),
            (inputs.pixel_values_videos, &inputs.video_grids, c.video_token_id, "video"),
        ];
        for (pixels, grids, token, what) in media {
            let Some(pixels) = pixels else { continue };
            let (merged, _) = tower(&pixels.to_device(device), grids)?;
            embeds = scatter(&embeds, &ids.eq(token), &merged, what)?;
        }
        embeds = TimeSeriesEmbedding::scatter_into(self.ecg(), &ids, embeds, inputs.ecg_signals)?;
        let (id_rows, mask_rows) = id_rows(&ids, &mask)?;
        let rope_inputs = RopeInputs {
            image_grids: &inputs.image_grids,
            video_grids: &inputs.video_grids,
            seconds_per_grid: &inputs.video_seconds_per_grid,
            image_token_id: c.image_token_id,
            video_token_id: c.video_token_id,
            merge: c.vision_config.spatial_merge_size,
            tokens_per_second: c.vision_config.tokens_per_second,
        };
        let index = rope_index(&id_rows, &mask_rows, &rope_inputs)?;
        let (positions, next_position) = position_ids(&index, &mask_rows, device);
        Ok(Embedded { embeds, positions, key_valid: mask.ne(0), next_position, injections: Vec::new() })
    }

    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        self.mrope.cos_sin(positions, &self.inv_freq)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        self.language_model.logits(self.lm_head.as_ref(), hidden)
    }

    fn save_pretrained(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), PolicyError> {
        let mut tensors: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().map(|(n, t)| (checkpoint_name(&n, self.layout), t)).collect();
        tensors.extend(self.extra.tensors());
        weights::save(&tensors, dir, max_shard_bytes)?;
        self.save_config(dir)
    }

    fn save_config(&self, dir: &Path) -> Result<(), PolicyError> {
        let mut config = self.source_config.clone().unwrap_or_else(|| self.config.to_json());
        if let Some(ts) = &self.time_series_embedding {
            ts.config().write_json(&mut config);
        }
        weights::write_json(&dir.join("config.json"), &config)
    }

    fn checkpoint_name(&self, name: &str) -> String {
        checkpoint_name(name, self.layout)
    }

    fn extra_tensors(&self) -> Vec<(String, Tensor)> {
        self.extra.tensors().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (file, memory) in [
            ("visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight"),
            ("model.layers.3.mlp.up_proj.weight", "model.language_model.layers.3.mlp.up_proj.weight"),
            ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
            ("lm_head.weight", "lm_head.weight"),
            ("model.visual.merger.ln_q.weight", "model.visual.merger.ln_q.weight"),
            ("model.language_model.norm.weight", "model.language_model.norm.weight"),
        ] {
            assert_eq!(in_memory_name(file), memory);
            assert_eq!(checkpoint_name(memory, NameLayout::InMemory), memory);
        }
        assert_eq!(
            checkpoint_name("model.visual.merger.mlp.0.bias", NameLayout::Published),
            "visual.merger.mlp.0.bias"
        );
        assert_eq!(checkpoint_name("model.language_model.norm.weight", NameLayout::Published), "model.norm.weight");
        assert_eq!(in_memory_name("time_series_embedding.proj.weight"), "time_series_embedding.proj.weight");
    }
}
