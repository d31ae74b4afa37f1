//! The ECG path's configuration: the encoder's sizes (ECG-JEPA's by default) and the
//! placeholder id, read from `config.json` and, where its sizes are not written there,
//! from the shapes of the checkpoint's `time_series_embedding.*` tensors.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `config.json` key of the placeholder id (QoQ-Med's).
pub const TOKEN_ID_KEY: &str = "time_series_token_id";
/// `config.json` key of the encoder's sizes (ours; absent from QoQ-Med's checkpoints,
/// whose encoder is always ECG-JEPA's ViT-B).
pub const ENCODER_KEY: &str = "time_series_encoder";
/// QoQ-Med's key for the projection's output width; it must equal the text width.
pub const EMBED_DIM_KEY: &str = "time_series_embed_dim";
/// Every `time_series_embedding.*` weight lives under this prefix.
pub const PREFIX: &str = "time_series_embedding.";

/// The sizes of ECG-JEPA's `MaskTransformer` as QoQ-Med uses it (`representation()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EcgEncoderConfig {
    /// Token width (768).
    pub embed_dim: i64,
    /// Transformer blocks (12).
    pub depth: i64,
    /// Attention heads (16).
    pub num_heads: i64,
    /// MLP hidden width (3,072 = 4 x 768).
    pub mlp_dim: i64,
    /// Leads of the input (8: I, II, V1-V6).
    pub leads: i64,
    /// Samples per lead (2,500: 10 s at 250 Hz).
    pub samples: i64,
    /// Samples per patch (50): 2,500 / 50 = 50 patches per lead.
    pub patch_size: i64,
}

impl Default for EcgEncoderConfig {
    fn default() -> Self {
        Self { embed_dim: 768, depth: 12, num_heads: 16, mlp_dim: 3072, leads: 8, samples: 2500, patch_size: 50 }
    }
}

impl EcgEncoderConfig {
    /// Patches per lead.
    pub fn patches(&self) -> i64 {
        self.samples / self.patch_size
    }

    /// Tokens of one ECG: leads x patches (400), lead-major.
    pub fn tokens(&self) -> i64 {
        self.leads * self.patches()
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("mlp_dim", self.mlp_dim),
            ("leads", self.leads),
            ("samples", self.samples),
            ("patch_size", self.patch_size),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{ENCODER_KEY}.{name} = {v} must be positive"));
        }
        if self.samples % self.patch_size != 0 {
            return Err(format!(
                "{ENCODER_KEY}: samples {} is not a multiple of patch_size {}",
                self.samples, self.patch_size
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(format!(
                "{ENCODER_KEY}: embed_dim {} is not a multiple of num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.embed_dim % 4 != 0 {
            return Err(format!(
                "{ENCODER_KEY}: embed_dim {} must be a multiple of 4 (2-D sin-cos code)",
                self.embed_dim
            ));
        }
        Ok(())
    }

    /// Parameters of the encoder (85,374,720 at ECG-JEPA's sizes, the sin-cos code's
    /// 307,200 included: QoQ-Med trains it).
    pub fn num_parameters(&self) -> i64 {
        let e = self.embed_dim;
        let block = 2 * 2 * e + 3 * e * e + (e * e + e) + (e * self.mlp_dim + self.mlp_dim) + (self.mlp_dim * e + e);
        (self.patch_size * e + e) + self.tokens() * e + self.depth * block + 2 * e
    }

    /// The sizes the checkpoint's tensors imply (`shapes`: checkpoint name -> shape), with
    /// ECG-JEPA's 16 heads (a head count leaves no trace in the shapes): what a QoQ-Med
    /// checkpoint, which writes no sizes, is read with.
    pub fn infer(shapes: &BTreeMap<String, Vec<i64>>) -> Result<Self, String> {
        let get = |name: &str| {
            let full = format!("{PREFIX}encoder.{name}");
            shapes.get(&full).ok_or_else(|| format!("the checkpoint has no `{full}`"))
        };
        let w_p = get("W_P.weight")?;
        let pos = get("pos_embed")?;
        let fc1 = get("encoder_blocks.blocks.0.mlp.fc1.weight")?;
        let (&[embed_dim, patch_size], &[tokens, _], &[mlp_dim, _]) = (w_p.as_slice(), pos.as_slice(), fc1.as_slice())
        else {
            return Err(format!(
                "`{PREFIX}encoder.*` has unexpected ranks: W_P.weight {w_p:?}, pos_embed {pos:?}, fc1.weight {fc1:?}"
            ));
        };
        let block_prefix = format!("{PREFIX}encoder.encoder_blocks.blocks.");
        let depth = shapes
            .keys()
            .filter_map(|k| k.strip_prefix(&block_prefix)?.split('.').next()?.parse::<i64>().ok())
            .max()
            .map_or(0, |d| d + 1);
        let leads = Self::default().leads;
        if tokens % leads != 0 {
            return Err(format!("`{PREFIX}encoder.pos_embed` has {tokens} rows, not a multiple of {leads} leads"));
        }
        let cfg = Self {
            embed_dim,
            depth,
            num_heads: Self::default().num_heads,
            mlp_dim,
            leads,
            samples: tokens / leads * patch_size,
            patch_size,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The ECG path of a policy: the placeholder and the encoder's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcgConfig {
    /// `<|time_series_pad|>`'s id: its embedding row is replaced by the ECG's embedding.
    pub token_id: i64,
    pub encoder: EcgEncoderConfig,
}

impl EcgConfig {
    /// The ECG path `config.json` describes, if any: its `time_series_token_id`, sizes from
    /// `time_series_encoder` or else the checkpoint's shapes. `hidden` is the text width,
    /// which `time_series_embed_dim` (when written) must equal.
    pub fn from_json(
        config: &Value,
        shapes: &BTreeMap<String, Vec<i64>>,
        hidden: i64,
        vocab: i64,
    ) -> Result<Option<Self>, String> {
        let Some(id) = config.get(TOKEN_ID_KEY) else { return Ok(None) };
        let token_id = id.as_i64().ok_or_else(|| format!("`{TOKEN_ID_KEY}` = {id} is not an integer"))?;
        if let Some(dim) = config.get(EMBED_DIM_KEY).filter(|v| !v.is_null()) {
            if dim.as_i64() != Some(hidden) {
                return Err(format!("`{EMBED_DIM_KEY}` = {dim} must equal the text width {hidden}"));
            }
        }
        let encoder = match config.get(ENCODER_KEY) {
            Some(v) => {
                serde_json::from_value::<EcgEncoderConfig>(v.clone()).map_err(|e| format!("`{ENCODER_KEY}`: {e}"))?
            }
            None if shapes.keys().any(|k| k.starts_with(PREFIX)) => EcgEncoderConfig::infer(shapes)?,
            None => {
                return Err(format!(
                    "`{TOKEN_ID_KEY}` is set but the weights hold no `{PREFIX}*` tensors: remove the key, or \
                     start the encoder with model.ecg_encoder = \"random\" or an ECG-JEPA checkpoint"
                ))
            }
        };
        encoder.validate()?;
        let cfg = Self { token_id, encoder };
        cfg.check_token(vocab)?;
        Ok(Some(cfg))
    }

    pub(crate) fn check_token(&self, vocab: i64) -> Result<(), String> {
        if !(0..vocab).contains(&self.token_id) {
            return Err(format!("`{TOKEN_ID_KEY}` = {} is outside the embedding's {vocab} rows", self.token_id));
        }
        Ok(())
    }

    /// Writes `time_series_token_id` (and the encoder's sizes when they are not ECG-JEPA's)
    /// into a `config.json` value.
    pub fn write_json(&self, config: &mut Value) {
        if let Some(obj) = config.as_object_mut() {
            obj.insert(TOKEN_ID_KEY.into(), json!(self.token_id));
            if self.encoder != EcgEncoderConfig::default() {
                obj.insert(ENCODER_KEY.into(), serde_json::to_value(self.encoder).expect("plain numbers"));
            } else {
                obj.remove(ENCODER_KEY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecg_jepa_sizes_have_the_published_parameter_count() {
        let c = EcgEncoderConfig::default();
        assert_eq!(c.tokens(), 400);
        assert_eq!(c.num_parameters(), 85_374_720);
        // The projection into Qwen2.5-VL-7B's 3,584 wide text.
        assert_eq!(768 * 3584 + 3584, 2_756_096);
    }

    #[test]
    fn sizes_follow_the_tensor_shapes() {
        let mut shapes = BTreeMap::new();
        let enc = |n: &str| format!("{PREFIX}encoder.{n}");
        shapes.insert(enc("W_P.weight"), vec![64, 50]);
        shapes.insert(enc("pos_embed"), vec![400, 64]);
        for i in 0..3 {
            shapes.insert(enc(&format!("encoder_blocks.blocks.{i}.mlp.fc1.weight")), vec![256, 64]);
        }
        let c = EcgEncoderConfig::infer(&shapes).unwrap();
        assert_eq!((c.embed_dim, c.depth, c.mlp_dim, c.samples, c.num_heads), (64, 3, 256, 2500, 16));
        shapes.remove(&enc("pos_embed"));
        assert!(EcgEncoderConfig::infer(&shapes).unwrap_err().contains("pos_embed"));
    }

    #[test]
    fn config_json_round_trips_and_bad_values_are_named() {
        let shapes = BTreeMap::new();
        let none = EcgConfig::from_json(&json!({}), &shapes, 8, 100).unwrap();
        assert!(none.is_none());
        let err = EcgConfig::from_json(&json!({"time_series_token_id": 5}), &shapes, 8, 100).unwrap_err();
        assert!(err.contains("no `time_series_embedding.*`"), "{err}");
        let small = EcgEncoderConfig { embed_dim: 32, depth: 1, num_heads: 4, mlp_dim: 64, ..Default::default() };
        let mut v = json!({"hidden_size": 8});
        EcgConfig { token_id: 7, encoder: small }.write_json(&mut v);
        let back = EcgConfig::from_json(&v, &shapes, 8, 100).unwrap().unwrap();
        assert_eq!(back, EcgConfig { token_id: 7, encoder: small });
        let err = EcgConfig::from_json(&v, &shapes, 8, 5).unwrap_err();
        assert!(err.contains("outside the embedding"), "{err}");
        v["time_series_embed_dim"] = json!(16);
        assert!(EcgConfig::from_json(&v, &shapes, 8, 100).unwrap_err().contains("time_series_embed_dim"));
    }
}
