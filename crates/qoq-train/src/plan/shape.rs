//! What the memory plan needs to know about a model, read from its `config.json` alone
//! (either family, every serialisation `qoq_policy` reads), and its parameter counts per
//! module group, counted exactly as the families build their variables.

use std::path::Path;

use qoq_policy::{EcgEncoderConfig, Family, ModuleGroup, Qwen25VLConfig, Qwen3VLConfig};

use crate::TrainError;

/// The decoder's settings as the family hands them to the shared decoder
/// (`decoder_config()`, whose type `qoq_policy` does not export by name).
macro_rules! text_shape {
    ($d:expr, $tied:expr) => {{
        let d = $d;
        TextShape {
            vocab: d.vocab_size,
            hidden: d.hidden_size,
            intermediate: d.intermediate_size,
            layers: d.num_hidden_layers,
            heads: d.num_attention_heads,
            kv_heads: d.num_key_value_heads,
            head_dim: d.head_dim,
            tied: $tied,
            qkv_bias: d.qkv_bias,
            o_bias: d.o_bias,
            qk_norm: d.qk_norm,
        }
    }};
}

/// The text decoder's dimensions (`layers/decoder.rs`, `layers/attention.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextShape {
    pub vocab: i64,
    pub hidden: i64,
    pub intermediate: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub tied: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: bool,
}

/// The vision tower's dimensions (`qwen3_vl/vision.rs`, `qwen2_5_vl/vision.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionShape {
    pub depth: i64,
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub in_channels: i64,
    pub patch: i64,
    pub temporal_patch: i64,
    pub merge: i64,
    pub out_hidden: i64,
    /// Qwen3-VL's learned position table (rows); 0 for Qwen2.5-VL.
    pub positions: i64,
    /// DeepStack mergers (Qwen3-VL); 0 for Qwen2.5-VL.
    pub deepstack: i64,
    /// Patches per attention window (Qwen2.5-VL's window blocks); 0: whole frames.
    pub window_patches: i64,
    /// Blocks that attend over whole frames when windows are used.
    pub full_blocks: i64,
}

/// A model as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub family: Family,
    pub text: TextShape,
    pub vision: VisionShape,
    /// The ECG encoder's sizes, when the model has (or the run gives it) an ECG path.
    pub ecg: Option<EcgEncoderConfig>,
}

/// Parameter counts (elements) per module group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub vision_tower: i64,
    pub merger: i64,
    pub llm: i64,
    pub ecg_encoder: i64,
    pub ecg_projection: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.vision_tower + self.merger + self.llm + self.ecg_encoder + self.ecg_projection
    }

    /// Elements of the groups `freeze` does not name.
    pub fn trainable(&self, freeze: &[ModuleGroup]) -> i64 {
        let keep = |g: ModuleGroup, n: i64| if freeze.contains(&g) { 0 } else { n };
        keep(ModuleGroup::VisionTower, self.vision_tower)
            + keep(ModuleGroup::Merger, self.merger)
            + keep(ModuleGroup::Llm, self.llm)
            + keep(ModuleGroup::EcgEncoder, self.ecg_encoder)
            + keep(ModuleGroup::EcgProjection, self.ecg_projection)
    }
}

impl ModelShape {
    /// Reads `dir/config.json` (nothing else in `dir`); errors name the file and the key.
    pub fn from_dir(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let bad = |e: String| TrainError::Config(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        Self::from_json(&value).map_err(bad)
    }

    /// A parsed `config.json` of either family (its `model_type`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let family = Family::from_model_type(model_type).map_err(|e| format!("`model_type`: {e}"))?;
        // The families' readers divide by these: refuse zeros here rather than panic there.
        let text = value.get("text_config").filter(|t| t.is_object()).unwrap_or(value);
        let section = if std::ptr::eq(text, value) { "" } else { "text_config." };
        for (obj, prefix, key) in [
            (text, section, "num_attention_heads"),
            (text, section, "num_key_value_heads"),
            (value.get("vision_config").unwrap_or(&serde_json::Value::Null), "vision_config.", "num_heads"),
        ] {
            if let Some(n) = obj.get(key) {
                if n.as_i64().is_none_or(|n| n < 1) {
                    return Err(format!("`{prefix}{key}` must be a positive integer, got {n}"));
                }
            }
        }
        let mut shape = match family {
            Family::Qwen3Vl => Self::qwen3_vl(&Qwen3VLConfig::from_json(value)?),
            Family::Qwen25Vl => Self::qwen2_5_vl(&Qwen25VLConfig::from_json(value)?),
        };
        // An ECG path: its sizes as config.json writes them, else ECG-JEPA's (the plan reads
        // no weights; QoQ-Med's checkpoints carry ECG-JEPA's ViT-B).
        if value.get(qoq_policy::ecg::TOKEN_ID_KEY).is_some() {
            shape.ecg = Some(match value.get(qoq_policy::ecg::ENCODER_KEY) {
                Some(v) => {
                    serde_json::from_value(v.clone()).map_err(|e| format!("`{}`: {e}", qoq_policy::ecg::ENCODER_KEY))?
                }
                None => EcgEncoderConfig::default(),
            });
        }
        Ok(shape)
    }

    pub fn qwen3_vl(c: &Qwen3VLConfig) -> Self {
        let d = c.decoder_config();
        let v = &c.vision_config;
        Self {
            family: Family::Qwen3Vl,
            text: text_shape!(d, c.tie_word_embeddings),
            vision: VisionShape {
                depth: v.depth,
                hidden: v.hidden_size,
                intermediate: v.intermediate_size,
                heads: v.num_heads,
                in_channels: v.in_channels,
                patch: v.patch_size,
                temporal_patch: v.temporal_patch_size,
                merge: v.spatial_merge_size,
                out_hidden: v.out_hidden_size,
                positions: v.num_position_embeddings,
                deepstack: v.deepstack_visual_indexes.len() as i64,
                window_patches: 0,
                full_blocks: v.depth,
            },
            ecg: None,
        }
    }

    pub fn qwen2_5_vl(c: &Qwen25VLConfig) -> Self {
        let d = c.decoder_config();
        let v = &c.vision_config;
        let window = c.merger_window() * v.spatial_merge_size;
        Self {
            family: Family::Qwen25Vl,
            text: text_shape!(d, c.tie_word_embeddings),
            vision: VisionShape {
                depth: v.depth,
                hidden: v.hidden_size,
                intermediate: v.intermediate_size,
                heads: v.num_heads,
                in_channels: v.in_channels,
                patch: v.patch_size,
                temporal_patch: v.temporal_patch_size,
                merge: v.spatial_merge_size,
                out_hidden: v.out_hidden_size,
                positions: 0,
                deepstack: 0,
                window_patches: window * window,
                full_blocks: v.fullatt_block_indexes.len() as i64,
            },
            ecg: None,
        }
    }

    /// One decoder layer's parameters (`layers/decoder.rs` `DecoderLayer::new`).
    pub fn layer_params(&self) -> i64 {
        let t = &self.text;
        let (h, q, kv) = (t.hidden, t.heads * t.head_dim, t.kv_heads * t.head_dim);
        let bias = |on: bool, n: i64| if on { n } else { 0 };
        2 * h // input_layernorm, post_attention_layernorm
            + h * q + bias(t.qkv_bias, q) // q_proj
            + 2 * (h * kv + bias(t.qkv_bias, kv)) // k_proj, v_proj
            + q * h + bias(t.o_bias, h) // o_proj
            + bias(t.qk_norm, 2 * t.head_dim) // q_norm, k_norm
            + 3 * h * t.intermediate // gate_proj, up_proj, down_proj
    }

    /// Parameters per module group, as `Qwen3VL::new` / `Qwen25VL::new` create them.
    pub fn counts(&self) -> Counts {
        let t = &self.text;
        let v = &self.vision;
        let (c, i) = (v.hidden, v.intermediate);
        let merged = c * v.merge * v.merge;
        let linear = |inp: i64, out: i64| inp * out + out;
        let patch = c * v.in_channels * v.temporal_patch * v.patch * v.patch;
        let (vision_tower, merger) = match self.family {
            // qwen3_vl/vision.rs: patch conv with bias, learned positions, LayerNorm blocks
            // with a GELU MLP, LayerNorm mergers (DeepStack ones normalise 4C).
            Family::Qwen3Vl => {
                let block = 4 * c + linear(c, 3 * c) + linear(c, c) + linear(c, i) + linear(i, c);
                let head = linear(merged, merged) + linear(merged, v.out_hidden);
                (patch + c + v.positions * c + v.depth * block, 2 * c + head + v.deepstack * (2 * merged + head))
            }
            // qwen2_5_vl/vision.rs: bias-free patch conv, RMSNorm blocks with SwiGLU, ln_q merger.
            Family::Qwen25Vl => {
                let block = 2 * c + linear(c, 3 * c) + linear(c, c) + 2 * linear(c, i) + linear(i, c);
                (patch + v.depth * block, c + linear(merged, merged) + linear(merged, v.out_hidden))
            }
        };
        let embed = t.vocab * t.hidden;
        let llm = embed + t.layers * self.layer_params() + t.hidden + if t.tied { 0 } else { embed };
        // ecg/encoder.rs and the projection Linear(E -> hidden) with bias.
        let (ecg_encoder, ecg_projection) =
            self.ecg.map_or((0, 0), |e| (e.num_parameters(), linear(e.embed_dim, t.hidden)));
        Counts { vision_tower, merger, llm, ecg_encoder, ecg_projection }
    }

    /// Elements of the largest trainable tensor (the optimizer's temporaries scale with it).
    pub fn largest_trainable(&self, freeze: &[ModuleGroup]) -> i64 {
        let t = &self.text;
        let v = &self.vision;
        let merged = v.hidden * v.merge * v.merge;
        let mut largest = 0;
        if !freeze.contains(&ModuleGroup::Llm) {
            largest = (t.vocab * t.hidden).max(t.hidden * t.intermediate).max(t.hidden * t.heads * t.head_dim);
        }
        if !freeze.contains(&ModuleGroup::Merger) {
            largest = largest.max(merged * merged).max(merged * v.out_hidden);
        }
        if !freeze.contains(&ModuleGroup::VisionTower) {
            largest = largest.max(v.hidden * v.intermediate).max(3 * v.hidden * v.hidden).max(v.positions * v.hidden);
        }
        if let Some(e) = &self.ecg {
            if !freeze.contains(&ModuleGroup::EcgEncoder) {
                largest = largest.max(e.embed_dim * e.mlp_dim).max(3 * e.embed_dim * e.embed_dim);
            }
            if !freeze.contains(&ModuleGroup::EcgProjection) {
                largest = largest.max(e.embed_dim * t.hidden);
            }
        }
        largest
    }

    /// Trainable elements of the largest set of units gathered at once under
    /// `distributed.sharding = "gradients" | "full"` (`qoq_policy::gate`): a decoder layer,
    /// the input stage (embeddings and vision tower), or the head (final norm and
    /// `lm_head`; with tied embeddings the head needs the input stage too).
    pub fn largest_unit(&self, freeze: &[ModuleGroup]) -> i64 {
        let t = &self.text;
        let c = self.counts();
        let llm = !freeze.contains(&ModuleGroup::Llm);
        let keep = |g: ModuleGroup, n: i64| if freeze.contains(&g) { 0 } else { n };
        let embed = t.vocab * t.hidden;
        let input = if llm { embed } else { 0 }
            + keep(ModuleGroup::VisionTower, c.vision_tower)
            + keep(ModuleGroup::Merger, c.merger)
            + keep(ModuleGroup::EcgEncoder, c.ecg_encoder)
            + keep(ModuleGroup::EcgProjection, c.ecg_projection);
        let head = if llm { t.hidden + if t.tied { 0 } else { embed } } else { 0 };
        let layer = if llm { self.layer_params() } else { 0 };
        layer.max(input).max(if t.tied { head + input } else { head })
    }
}

#[cfg(test)]
mod tests {
    use qoq_policy::{Policy, Qwen25VL, Qwen3VL};
    use tch::Device;

    use super::*;

    /// The counts of the variables a model really creates, per group.
    fn counted(model: &dyn Policy) -> Counts {
        let mut c = Counts::default();
        for (name, t) in model.var_store().variables() {
            let n = t.numel() as i64;
            match model.module_group(&name) {
                ModuleGroup::VisionTower => c.vision_tower += n,
                ModuleGroup::Merger => c.merger += n,
                ModuleGroup::EcgEncoder => c.ecg_encoder += n,
                ModuleGroup::EcgProjection => c.ecg_projection += n,
                ModuleGroup::Llm => c.llm += n,
            }
        }
        c
    }

    #[test]
    fn counts_equal_the_variables_qwen3_vl_creates() {
        let mut config = Qwen3VLConfig::tiny();
        for (tied, bias) in [(true, false), (false, true)] {
            config.tie_word_embeddings = tied;
            config.text_config.attention_bias = bias;
            let model = Qwen3VL::new(&config, Device::Cpu).unwrap();
            assert_eq!(ModelShape::qwen3_vl(&config).counts(), counted(&model), "tied {tied}, bias {bias}");
        }
    }

    #[test]
    fn counts_include_an_ecg_path_as_add_ecg_creates_it() {
        let sizes = EcgEncoderConfig { embed_dim: 16, depth: 2, num_heads: 4, mlp_dim: 24, ..Default::default() };
        let config = Qwen3VLConfig::tiny();
        let mut model = Qwen3VL::new(&config, Device::Cpu).unwrap();
        model.add_ecg(&qoq_policy::EcgInit::Random { seed: 0 }, Some(sizes)).unwrap();
        let mut shape = ModelShape::qwen3_vl(&config);
        shape.ecg = Some(sizes);
        assert_eq!(shape.counts(), counted(&model));
        // From config.json: the key with ECG-JEPA's sizes by default.
        let mut json = config.to_json();
        json["time_series_token_id"] = serde_json::json!(151_669);
        let from_json = ModelShape::from_json(&json).unwrap();
        let (c, hidden) = (from_json.counts(), from_json.text.hidden);
        assert_eq!((c.ecg_encoder, c.ecg_projection), (85_374_720, 768 * hidden + hidden));
    }

    #[test]
    fn counts_equal_the_variables_qwen2_5_vl_creates() {
        let mut config = Qwen25VLConfig::tiny();
        for tied in [true, false] {
            config.tie_word_embeddings = tied;
            let model = Qwen25VL::new(&config, Device::Cpu).unwrap();
            assert_eq!(ModelShape::qwen2_5_vl(&config).counts(), counted(&model), "tied {tied}");
        }
    }

    #[test]
    fn freezing_removes_groups_from_the_trainable_count() {
        let shape = ModelShape::qwen3_vl(&Qwen3VLConfig::tiny());
        let c = shape.counts();
        assert_eq!(c.trainable(&[]), c.total());
        assert_eq!(c.trainable(&[ModuleGroup::Llm]), c.vision_tower + c.merger);
        assert_eq!(c.trainable(&[ModuleGroup::VisionTower, ModuleGroup::Merger, ModuleGroup::Llm]), 0);
        let t = &shape.text;
        assert_eq!(shape.largest_trainable(&[]), t.vocab * t.hidden);
    }

    #[test]
    fn the_published_flat_qwen2_5_vl_7b_config_has_its_8_29_b_parameters() {
        let config = serde_json::json!({
            "model_type": "qwen2_5_vl", "vocab_size": 152064, "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": false,
            "vision_config": {
                "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                "spatial_patch_size": 14, "temporal_patch_size": 2, "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2
            }
        });
        let shape = ModelShape::from_json(&config).unwrap();
        assert_eq!(shape.family, Family::Qwen25Vl);
        // Qwen2.5-VL-7B-Instruct: 8,292,166,656 parameters (8.29 B).
        assert_eq!(shape.counts().total(), 8_292_166_656);
        assert_eq!(shape.vision.window_patches, 64);
    }

    #[test]
    fn zero_heads_are_an_error_naming_the_key() {
        let mut config = Qwen3VLConfig::tiny().to_json();
        config["text_config"]["num_key_value_heads"] = serde_json::json!(0);
        let err = ModelShape::from_json(&config).unwrap_err();
        assert!(err.contains("text_config.num_key_value_heads"), "{err}");
    }

    #[test]
    fn a_config_of_an_unknown_family_names_model_type() {
        let err = ModelShape::from_json(&serde_json::json!({"model_type": "llava"})).unwrap_err();
        assert!(err.contains("model_type") && err.contains("qwen3_vl"), "{err}");
    }
}
