//! `config.json` of a Qwen3-VL checkpoint, in both serialisations: transformers 4.57 writes
//! `rope_theta` + `rope_scaling { mrope_section, .. }` in `text_config`; 5.x writes
//! `rope_parameters { rope_theta, mrope_section, .. }`. Field names mirror the file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layers::DecoderConfig;
use crate::PolicyError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Resolved from either serialisation.
    pub rope_theta: f64,
    /// Frequency slots driven by the T, H, W axes (sums to head_dim / 2).
    pub mrope_section: [i64; 3],
    #[serde(default)]
    pub attention_bias: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub depth: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_heads: i64,
    #[serde(default = "three")]
    pub in_channels: i64,
    pub patch_size: i64,
    pub temporal_patch_size: i64,
    pub spatial_merge_size: i64,
    pub out_hidden_size: i64,
    pub num_position_embeddings: i64,
    pub deepstack_visual_indexes: Vec<i64>,
    /// Base of the 2-D vision rotary embedding.
    #[serde(default = "vision_theta")]
    pub rope_theta: f64,
}

/// The whole model's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen3VLConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn three() -> i64 {
    3
}
fn vision_theta() -> f64 {
    10_000.0
}

impl Qwen3VLConfig {
    /// Read `config.json` (either serialisation); errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| PolicyError::Checkpoint(format!("{}: not JSON ({e})", path.display())))?;
        Self::from_json(&value).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Resolve a parsed `config.json`.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let text = v.get("text_config").ok_or("missing `text_config`")?;
        let vision = v.get("vision_config").ok_or("missing `vision_config`")?;
        let int = |obj: &Value, section: &str, key: &str| -> Result<i64, String> {
            obj.get(key).and_then(Value::as_i64).ok_or_else(|| format!("`{section}.{key}` missing or not an integer"))
        };
        let top_int = |key: &str, default: i64| v.get(key).and_then(Value::as_i64).unwrap_or(default);

        // rope: 5.x `rope_parameters`, else 4.57 `rope_theta` + `rope_scaling`.
        let rope = text.get("rope_parameters").or_else(|| text.get("rope_scaling"));
        let rope_theta = text
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| text.get("rope_theta"))
            .and_then(Value::as_f64)
            .ok_or("`text_config.rope_parameters.rope_theta` (or `text_config.rope_theta`) missing")?;
        let section: Vec<i64> = rope
            .and_then(|r| r.get("mrope_section"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_else(|| vec![24, 20, 20]);
        let mrope_section: [i64; 3] =
            section.try_into().map_err(|_| "`mrope_section` must hold 3 integers".to_string())?;
        if rope.and_then(|r| r.get("mrope_interleaved")).and_then(Value::as_bool) == Some(false) {
            return Err("`mrope_interleaved: false` is not Qwen3-VL's rope; only interleaved is supported".into());
        }

        let heads = int(text, "text_config", "num_attention_heads")?;
        let hidden = int(text, "text_config", "hidden_size")?;
        let text_config = TextConfig {
            vocab_size: int(text, "text_config", "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: int(text, "text_config", "intermediate_size")?,
            num_hidden_layers: int(text, "text_config", "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: text.get("num_key_value_heads").and_then(Value::as_i64).unwrap_or(heads),
            head_dim: text.get("head_dim").and_then(Value::as_i64).unwrap_or(hidden / heads),
            rms_norm_eps: text.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            attention_bias: text.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
        };
        let vision_theta =
            vision.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(Value::as_f64).unwrap_or(10_000.0);
        let vision_config = VisionConfig {
            depth: int(vision, "vision_config", "depth")?,
            hidden_size: int(vision, "vision_config", "hidden_size")?,
            intermediate_size: int(vision, "vision_config", "intermediate_size")?,
            num_heads: int(vision, "vision_config", "num_heads")?,
            in_channels: vision.get("in_channels").and_then(Value::as_i64).unwrap_or(3),
            patch_size: int(vision, "vision_config", "patch_size")?,
            temporal_patch_size: int(vision, "vision_config", "temporal_patch_size")?,
            spatial_merge_size: int(vision, "vision_config", "spatial_merge_size")?,
            out_hidden_size: int(vision, "vision_config", "out_hidden_size")?,
            num_position_embeddings: int(vision, "vision_config", "num_position_embeddings")?,
            deepstack_visual_indexes: vision
                .get("deepstack_visual_indexes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default(),
            rope_theta: vision_theta,
        };
        let tie = v
            .get("tie_word_embeddings")
            .or_else(|| text.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let config = Qwen3VLConfig {
            text_config,
            vision_config,
            image_token_id: top_int("image_token_id", 151655),
            video_token_id: top_int("video_token_id", 151656),
            vision_start_token_id: top_int("vision_start_token_id", 151652),
            vision_end_token_id: top_int("vision_end_token_id", 151653),
            tie_word_embeddings: tie,
        };
        config.validate()?;
        Ok(config)
    }

    /// A tiny random-initialisable model over the real Qwen vocabulary and special ids,
    /// for tests and demos (a few MB of weights, mostly the embedding).
    pub fn tiny() -> Self {
        Self {
            text_config: TextConfig {
                vocab_size: 151_936,
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-6,
                rope_theta: 5_000_000.0,
                mrope_section: [3, 3, 2],
                attention_bias: false,
            },
            vision_config: VisionConfig {
                depth: 2,
                hidden_size: 32,
                intermediate_size: 64,
                num_heads: 2,
                in_channels: 3,
                patch_size: 16,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                out_hidden_size: 32,
                num_position_embeddings: 64,
                deepstack_visual_indexes: vec![0, 1],
                rope_theta: 10_000.0,
            },
            image_token_id: 151_655,
            video_token_id: 151_656,
            vision_start_token_id: 151_652,
            vision_end_token_id: 151_653,
            tie_word_embeddings: true,
        }
    }

    /// `config.json` in transformers 5.x's serialisation (`rope_parameters`).
    pub fn to_json(&self) -> Value {
        let t = &self.text_config;
        let v = &self.vision_config;
        serde_json::json!({
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen3_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "head_dim": t.head_dim,
                "hidden_act": "silu",
                "rms_norm_eps": t.rms_norm_eps,
                "attention_bias": t.attention_bias,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": t.rope_theta,
                    "mrope_section": t.mrope_section,
                    "mrope_interleaved": true,
                },
            },
            "vision_config": {
                "model_type": "qwen3_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_channels": v.in_channels,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "out_hidden_size": v.out_hidden_size,
                "num_position_embeddings": v.num_position_embeddings,
                "deepstack_visual_indexes": v.deepstack_visual_indexes,
                "hidden_act": "gelu_pytorch_tanh",
                "rope_parameters": { "rope_type": "axial", "rope_theta": v.rope_theta },
            },
        })
    }

    /// The shared decoder's settings: Qwen3 layers (q/k norm, `attention_bias` on all
    /// four projections).
    pub fn decoder_config(&self) -> DecoderConfig {
        let t = &self.text_config;
        DecoderConfig {
            vocab_size: t.vocab_size,
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            num_key_value_heads: t.num_key_value_heads,
            head_dim: t.head_dim,
            rms_norm_eps: t.rms_norm_eps,
            qkv_bias: t.attention_bias,
            o_bias: t.attention_bias,
            qk_norm: true,
        }
    }

    /// The invariants the forward relies on.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.mrope_section.iter().sum::<i64>() * 2 != t.head_dim {
            return Err(format!("mrope_section {:?} must sum to head_dim / 2 = {}", t.mrope_section, t.head_dim / 2));
        }
        if t.num_attention_heads % t.num_key_value_heads != 0 {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(format!("vision out_hidden_size {} != text hidden_size {}", v.out_hidden_size, t.hidden_size));
        }
        let side = (v.num_position_embeddings as f64).sqrt() as i64;
        if side * side != v.num_position_embeddings {
            return Err("vision num_position_embeddings must be a perfect square".into());
        }
        if v.hidden_size % v.num_heads != 0 || (v.hidden_size / v.num_heads) % 4 != 0 {
            return Err("vision head_dim must be a multiple of 4 (2-D rotary)".into());
        }
        if v.deepstack_visual_indexes.iter().any(|&i| i < 0 || i >= v.depth) {
            return Err("deepstack_visual_indexes must lie within the vision depth".into());
        }
        if v.deepstack_visual_indexes.len() as i64 > t.num_hidden_layers {
            return Err("more deepstack features than text layers".into());
        }
        Ok(())
    }
}
