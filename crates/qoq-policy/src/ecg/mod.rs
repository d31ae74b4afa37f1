//! The ECG path inside the policy: ECG-JEPA's encoder and QoQ-Med's projection
//! (`time_series_embedding.{encoder, linear}`), one embedding per ECG, scattered at the
//! ECG's placeholder `<|time_series_pad|>` (one bare token, first in the user turn).
//!
//! The module lives in the policy's variable store under QoQ-Med's weight names, so it
//! trains, freezes (module groups `ecg_encoder`, `ecg_projection`), broadcasts, shards,
//! checkpoints and exports with the rest of the model. A checkpoint that carries the
//! weights and `time_series_token_id` loads them; [`crate::Policy::add_ecg`] gives a
//! model without them an encoder ([`EcgInit`]) and a fresh projection.
//!
//! ```no_run
//! use qoq_policy::{load_policy, EcgInit, Inputs};
//! let mut policy = load_policy(std::path::Path::new("data/tiny-qwen3-vl"), tch::Device::Cpu)?;
//! policy.add_ecg(&EcgInit::Random { seed: 0 }, None)?;
//! let token = policy.ecg().unwrap().token_id();
//! let ids = tch::Tensor::from_slice(&[151644i64, 872, 198, token, 9707, 151645]).view([1, 6]);
//! let signals = tch::Tensor::zeros([1, 8, 2500], (tch::Kind::Float, tch::Device::Cpu));
//! let inputs = Inputs { input_ids: Some(&ids), ecg_signals: Some(&signals), ..Default::default() };
//! let (logits, _) = policy.prefill(&inputs)?;
//! # Ok::<(), qoq_policy::PolicyError>(())
//! ```

mod config;
mod encoder;
mod jepa_checkpoint;

use std::path::{Path, PathBuf};

use tch::nn::{self, Module};
use tch::Tensor;

pub use config::{EcgConfig, EcgEncoderConfig, ENCODER_KEY, TOKEN_ID_KEY};
pub use encoder::{cross_pattern_mask, sincos_2d, EcgJepaEncoder};
pub use jepa_checkpoint::{encoder_sizes, load_jepa_checkpoint};

use crate::layers::scatter;
use crate::policy::ModuleGroup;
use crate::PolicyError;

/// The placeholder token of one ECG.
pub const TIME_SERIES_PAD: &str = "<|time_series_pad|>";

/// `time_series_embedding`: the encoder, then `linear` (E -> text width, with bias, no
/// activation): [n, 8, 2500] -> [n, hidden].
#[derive(Debug)]
pub struct TimeSeriesEmbedding {
    encoder: EcgJepaEncoder,
    linear: nn::Linear,
    config: EcgConfig,
}

impl TimeSeriesEmbedding {
    /// Variables under `root / "time_series_embedding"`. The encoder starts as
    /// [`EcgJepaEncoder::new`] does; the projection as PyTorch's `nn.Linear` (weight and
    /// bias uniform in +-1/sqrt(E)), as QoQ-Med's does when it builds its checkpoint.
    pub fn new(root: &nn::Path, config: &EcgConfig, hidden: i64) -> Self {
        let p = root / "time_series_embedding";
        let e = config.encoder.embed_dim;
        let bound = 1.0 / (e as f64).sqrt();
        let linear_config = nn::LinearConfig {
            ws_init: nn::Init::Uniform { lo: -bound, up: bound },
            bs_init: Some(nn::Init::Uniform { lo: -bound, up: bound }),
            bias: true,
        };
        Self {
            encoder: EcgJepaEncoder::new(&p / "encoder", &config.encoder),
            linear: nn::linear(&p / "linear", e, hidden, linear_config),
            config: *config,
        }
    }

    pub fn token_id(&self) -> i64 {
        self.config.token_id
    }

    pub fn config(&self) -> &EcgConfig {
        &self.config
    }

    pub fn encoder(&self) -> &EcgJepaEncoder {
        &self.encoder
    }

    /// One embedding per ECG: `signals` [n, leads, samples] (preprocessed) -> [n, hidden].
    pub fn forward(&self, signals: &Tensor) -> Result<Tensor, PolicyError> {
        Ok(self.linear.forward(&self.encoder.representation(signals)?))
    }

    /// `embeds` with each ECG's embedding at its placeholder (in order); an error when the
    /// prompts' placeholders and the signals disagree in number.
    pub(crate) fn scatter_into(
        this: Option<&Self>,
        ids: &Tensor,
        embeds: Tensor,
        signals: Option<&Tensor>,
    ) -> Result<Tensor, PolicyError> {
        match (this, signals) {
            (Some(ts), Some(signals)) => scatter(&embeds, &ids.eq(ts.token_id()), &ts.forward(signals)?, "ECG"),
            (Some(ts), None) => {
                let found = ids.eq(ts.token_id()).sum(tch::Kind::Int64).int64_value(&[]);
                if found > 0 {
                    return Err(PolicyError::Input(format!(
                        "the prompts hold {found} ECG placeholder tokens but no ECG signals were given"
                    )));
                }
                Ok(embeds)
            }
            (None, Some(_)) => Err(PolicyError::Input(
                "ECG signals were given but this model has no ECG encoder (set model.ecg_encoder, or load a \
                 checkpoint with time_series_embedding.* weights)"
                    .into(),
            )),
            (None, None) => Ok(embeds),
        }
    }
}

/// The module group of a variable of the ECG path, by name.
pub fn module_group(name: &str) -> Option<ModuleGroup> {
    let rest = name.strip_prefix("time_series_embedding.")?;
    Some(if rest.starts_with("linear.") { ModuleGroup::EcgProjection } else { ModuleGroup::EcgEncoder })
}

/// Where the encoder of a model without an ECG path starts (`model.ecg_encoder`). The
/// projection starts fresh either way; `seed` draws it (and a random encoder), so a
/// reference model built the same way equals the policy's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcgInit {
    /// ECG-JEPA's random start ([`EcgJepaEncoder::new`]).
    Random { seed: u64 },
    /// An ECG-JEPA release, `torch.save({'encoder': state_dict, 'epoch': e})` (keys without
    /// the `time_series_embedding.encoder.` prefix), read by [`load_jepa_checkpoint`].
    JepaCheckpoint { path: PathBuf, seed: u64 },
}

impl EcgInit {
    /// `"random"` or the path of an ECG-JEPA checkpoint.
    pub fn parse(value: &str, seed: u64) -> Self {
        if value == "random" {
            EcgInit::Random { seed }
        } else {
            EcgInit::JepaCheckpoint { path: PathBuf::from(value), seed }
        }
    }

    fn seed(&self) -> u64 {
        match self {
            EcgInit::Random { seed } | EcgInit::JepaCheckpoint { seed, .. } => *seed,
        }
    }
}

/// The ECG path a family gives a model that had none: `init`'s encoder, a fresh projection,
/// `token_id` as the placeholder.
///
/// `sizes` sets a random encoder's sizes (ECG-JEPA's when `None`: tests and demos use a
/// small one); a checkpoint's shapes set its own, which `sizes` must then match.
pub(crate) fn build(
    vs: &nn::VarStore,
    init: &EcgInit,
    sizes: Option<EcgEncoderConfig>,
    token_id: i64,
    hidden: i64,
    vocab: i64,
) -> Result<TimeSeriesEmbedding, PolicyError> {
    // An ECG-JEPA release is read once: its shapes size the encoder, its values fill it.
    let file = match init {
        EcgInit::JepaCheckpoint { path, .. } => Some((jepa_checkpoint::read(path)?, path)),
        EcgInit::Random { .. } => None,
    };
    let encoder = match &file {
        None => sizes.unwrap_or_default(),
        Some((file, path)) => {
            let found = jepa_checkpoint::config_of(file, path)?;
            if let Some(sizes) = sizes.filter(|s| *s != found) {
                return Err(PolicyError::Checkpoint(format!(
                    "{}: the checkpoint's encoder has sizes {found:?}, model.ecg_encoder_sizes asks for {sizes:?}",
                    path.display()
                )));
            }
            found
        }
    };
    encoder.validate().map_err(PolicyError::Checkpoint)?;
    let config = EcgConfig { token_id, encoder };
    config.check_token(vocab).map_err(PolicyError::Checkpoint)?;
    tch::manual_seed(init.seed() as i64);
    let ts = TimeSeriesEmbedding::new(&vs.root(), &config, hidden);
    if let Some((file, path)) = file {
        jepa_checkpoint::copy_into(&vs.variables(), file, path)?;
    }
    Ok(ts)
}

/// The ECG path of a checkpoint folder being loaded, built into `vs` (its weights are
/// then read with the rest) with its placeholder banned in `tokens`; `None` when
/// [`config_of_checkpoint`] finds none.
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_checkpoint(
    vs: &nn::VarStore,
    tokens: &mut crate::SpecialTokens,
    config: &serde_json::Value,
    dir: &Path,
    family: crate::Family,
    hidden: i64,
    vocab: i64,
) -> Result<Option<TimeSeriesEmbedding>, PolicyError> {
    let Some(ecg) = config_of_checkpoint(config, dir, family, hidden, vocab)? else { return Ok(None) };
    tokens.set_time_series(ecg.token_id);
    Ok(Some(TimeSeriesEmbedding::new(&vs.root(), &ecg, hidden)))
}

/// The ECG path a checkpoint folder describes: `config.json`'s `time_series_token_id` with
/// the weights' `time_series_embedding.*` shapes. Weights of QoQ-Med's encoder without the
/// key (a config rewritten by a tool that does not know it) take the family's default id,
/// with a note.
fn config_of_checkpoint(
    config: &serde_json::Value,
    dir: &Path,
    family: crate::Family,
    hidden: i64,
    vocab: i64,
) -> Result<Option<EcgConfig>, PolicyError> {
    let shapes = crate::weights::tensor_shapes(dir)?;
    let mut config = config.clone();
    // The encoder's patch embedding marks QoQ-Med's layout (other `time_series_embedding.*`
    // tensors, from another model's design, stay unused extras).
    let marker = format!("{}encoder.W_P.weight", config::PREFIX);
    if config.get(TOKEN_ID_KEY).is_none() && shapes.contains_key(&marker) {
        let id = family.default_time_series_token_id();
        eprintln!(
            "note: {}: the weights carry time_series_embedding.* but config.json has no `{TOKEN_ID_KEY}`; using {id}",
            dir.display()
        );
        config[TOKEN_ID_KEY] = serde_json::json!(id);
    }
    EcgConfig::from_json(&config, &shapes, hidden, vocab)
        .map_err(|e| PolicyError::Checkpoint(format!("{}: {e}", dir.join("config.json").display())))
}

/// [`crate::Policy::add_ecg`] for a family: builds the path into `vs`, bans its placeholder.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attach(
    slot: &mut Option<TimeSeriesEmbedding>,
    tokens: &mut crate::SpecialTokens,
    vs: &nn::VarStore,
    family: crate::Family,
    init: &EcgInit,
    sizes: Option<EcgEncoderConfig>,
    hidden: i64,
    vocab: i64,
) -> Result<(), PolicyError> {
    if let Some(ts) = slot {
        return Err(PolicyError::Checkpoint(format!(
            "the model already has an ECG encoder (time_series_embedding.*, placeholder id {}); unset \
             model.ecg_encoder to train the one it carries",
            ts.token_id()
        )));
    }
    let ts = build(vs, init, sizes, family.default_time_series_token_id(), hidden, vocab)?;
    tokens.set_time_series(ts.token_id());
    *slot = Some(ts);
    Ok(())
}
