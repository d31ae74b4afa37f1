//! `config.json` of a Qwen2.5-VL checkpoint, in both forms: the published flat one (text
//! fields at the root, `rope_scaling {type: mrope, mrope_section}`, `vision_config.in_chans`)
//! and transformers 5.x's nested one (`text_config`, `rope_parameters`). Values come from
//! the file; where a key is absent, 5.24's class default applies (they differ from the 7B
//! file for `rms_norm_eps` and `tokens_per_second`).

use std::path::Path;

use serde_json::Value;

use crate::layers::DecoderConfig;
use crate::PolicyError;

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    /// `hidden_size / num_attention_heads` (the file has no `head_dim`).
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Consecutive frequency chunks driven by the T, H, W axes (sums to head_dim / 2).
    pub mrope_section: [i64; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_heads: i64,
    pub in_channels: i64,
    pub patch_size: i64,
    pub temporal_patch_size: i64,
    pub spatial_merge_size: i64,
    /// Window side in pixels (112: 4x4 merged tokens).
    pub window_size: i64,
    /// Blocks that attend over whole frames; the others attend within windows.
    pub fullatt_block_indexes: Vec<i64>,
    pub out_hidden_size: i64,
    /// Temporal rope positions per second of video.
    pub tokens_per_second: f64,
    pub rope_theta: f64,
}

/// The whole model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen25VLConfig {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
}

fn int(obj: &Value, section: &str, key: &str) -> Result<i64, String> {
    obj.get(key).and_then(Value::as_i64).ok_or_else(|| format!("`{section}{key}` missing or not an integer"))
}

impl Qwen25VLConfig {
    /// Read `config.json` (either form); errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let value = crate::weights::read_json(path)?;
        Self::from_json(&value).map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Resolve a parsed `config.json`: a `text_config` object wins; without one the text
    /// fields are read from the root (the published form).
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let (text, section) = match v.get("text_config") {
            Some(t) if t.is_object() => (t, "text_config."),
            _ => (v, ""),
        };
        let vision = v.get("vision_config").ok_or("missing `vision_config`")?;
        let rope = text.get("rope_parameters").or_else(|| text.get("rope_scaling"));
        let rope_theta = text
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| text.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(1_000_000.0);
        let mrope: Vec<i64> = rope
            .and_then(|r| r.get("mrope_section"))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                format!("`{section}rope_scaling.mrope_section` (or `rope_parameters.mrope_section`) missing")
            })?
            .iter()
            .map(|x| x.as_i64().ok_or("`mrope_section` must hold integers"))
            .collect::<Result<_, _>>()?;
        let mrope_section: [i64; 3] =
            mrope.try_into().map_err(|_| "`mrope_section` must hold 3 integers".to_string())?;
        let heads = int(text, section, "num_attention_heads")?;
        let hidden = int(text, section, "hidden_size")?;
        let text_config = TextConfig {
            vocab_size: int(text, section, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: int(text, section, "intermediate_size")?,
            num_hidden_layers: int(text, section, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: text.get("num_key_value_heads").and_then(Value::as_i64).unwrap_or(heads),
            head_dim: if heads > 0 { hidden / heads } else { 0 },
            rms_norm_eps: text.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5),
            rope_theta,
            mrope_section,
        };
        let vs = "vision_config.";
        let vision_config = VisionConfig {
            depth: int(vision, vs, "depth")?,
            hidden_size: int(vision, vs, "hidden_size")?,
            intermediate_size: int(vision, vs, "intermediate_size")?,
            num_heads: int(vision, vs, "num_heads")?,
            in_channels: vision
                .get("in_channels")
                .or_else(|| vision.get("in_chans"))
                .and_then(Value::as_i64)
                .unwrap_or(3),
            patch_size: vision
                .get("patch_size")
                .or_else(|| vision.get("spatial_patch_size"))
                .and_then(Value::as_i64)
                .unwrap_or(14),
            temporal_patch_size: vision.get("temporal_patch_size").and_then(Value::as_i64).unwrap_or(2),
            spatial_merge_size: vision.get("spatial_merge_size").and_then(Value::as_i64).unwrap_or(2),
            window_size: vision.get("window_size").and_then(Value::as_i64).unwrap_or(112),
            fullatt_block_indexes: match vision.get("fullatt_block_indexes") {
                Some(a) => a
                    .as_array()
                    .ok_or("`vision_config.fullatt_block_indexes` must be a list")?
                    .iter()
                    .map(|x| x.as_i64().ok_or("`vision_config.fullatt_block_indexes` must hold integers"))
                    .collect::<Result<_, _>>()?,
                None => vec![7, 15, 23, 31],
            },
            out_hidden_size: int(vision, vs, "out_hidden_size")?,
            tokens_per_second: vision.get("tokens_per_second").and_then(Value::as_f64).unwrap_or(4.0),
            rope_theta: vision
                .get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        // 5.x ties on the root flag; a pre-v5 `text_config.tie_word_embeddings: true` is forwarded.
        let tie = v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false)
            || v.get("text_config")
                .and_then(|t| t.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let top = |key: &str, default: i64| v.get(key).and_then(Value::as_i64).unwrap_or(default);
        let config = Self {
            text_config,
            vision_config,
            image_token_id: top("image_token_id", 151_655),
            video_token_id: top("video_token_id", 151_656),
            vision_start_token_id: top("vision_start_token_id", 151_652),
            vision_end_token_id: top("vision_end_token_id", 151_653),
            tie_word_embeddings: tie,
        };
        config.validate()?;
        Ok(config)
    }

    /// A tiny random-initialisable model over the real Qwen vocabulary and special ids
    /// (for the demo and tests; mostly the embedding).
    pub fn tiny() -> Self {
        Self {
            text_config: TextConfig {
                vocab_size: 151_936,
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 8,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                mrope_section: [2, 1, 1],
            },
            vision_config: VisionConfig {
                depth: 2,
                hidden_size: 32,
                intermediate_size: 48,
                num_heads: 2,
                in_channels: 3,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: vec![1],
                out_hidden_size: 32,
                tokens_per_second: 2.0,
                rope_theta: 10_000.0,
            },
            image_token_id: 151_655,
            video_token_id: 151_656,
            vision_start_token_id: 151_652,
            vision_end_token_id: 151_653,
            tie_word_embeddings: true,
        }
    }

    /// `config.json` in transformers 5.24's nested serialisation.
    pub fn to_json(&self) -> Value {
        let t = &self.text_config;
        let v = &self.vision_config;
        serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "hidden_act": "silu",
                "rms_norm_eps": t.rms_norm_eps,
                "rope_parameters": { "rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": t.mrope_section },
                "use_sliding_window": false,
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_channels": v.in_channels,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": v.fullatt_block_indexes,
                "out_hidden_size": v.out_hidden_size,
                // transformers 5.24 takes an integer here (and refuses 2.0).
                "tokens_per_second": v.tokens_per_second as i64,
                "hidden_act": "silu",
            },
        })
    }

    /// The shared decoder's settings: Qwen2 layers (q/k/v bias, no o_proj bias, no q/k norm).
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
            qkv_bias: true,
            o_bias: false,
            qk_norm: false,
        }
    }

    /// Merged tokens per window side (`window_size / merge / patch`).
    pub fn merger_window(&self) -> i64 {
        let v = &self.vision_config;
        v.window_size / v.spatial_merge_size / v.patch_size
    }

    /// The invariants the forward relies on.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads <= 0
            || t.num_key_value_heads <= 0
            || t.num_attention_heads % t.num_key_value_heads != 0
        {
            return Err("num_attention_heads must be a positive multiple of num_key_value_heads".into());
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        if t.mrope_section.iter().sum::<i64>() * 2 != t.head_dim {
            return Err(format!("mrope_section {:?} must sum to head_dim / 2 = {}", t.mrope_section, t.head_dim / 2));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(format!("vision out_hidden_size {} != text hidden_size {}", v.out_hidden_size, t.hidden_size));
        }
        if v.num_heads <= 0 || v.hidden_size % v.num_heads != 0 || (v.hidden_size / v.num_heads) % 4 != 0 {
            return Err("vision head_dim must be a multiple of 4 (2-D rotary)".into());
        }
        let unit = v.patch_size * v.spatial_merge_size;
        if unit <= 0 || v.window_size % unit != 0 || v.window_size < unit {
            return Err(format!(
                "vision window_size {} must be a positive multiple of patch_size x spatial_merge_size = {unit}",
                v.window_size
            ));
        }
        if v.fullatt_block_indexes.iter().any(|&i| i < 0 || i >= v.depth) {
            return Err("fullatt_block_indexes must lie within the vision depth".into());
        }
        Ok(())
    }
}
