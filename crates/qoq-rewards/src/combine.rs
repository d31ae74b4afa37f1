//! The weighted reward: configuration, the three named presets, and batch scoring.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::answer::LabelOptions;
use crate::f1::f1_reward;
use crate::format::{format_reward, length_reward};
use crate::grounding::{iou_reward, predicted_boxes, BBox, GroundingTarget, IouAggregation, Mask};
use crate::jaccard::jaccard_reward;
use crate::json_block::fenced_blocks;
use crate::RewardError;

/// Weight of each component in `overall`. Missing keys are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub f1: f64,
    pub iou: f64,
    pub format: f64,
    pub length: f64,
    pub jaccard: f64,
}

impl Weights {
    /// Component names, as used in `--weights`, in output files and in metric names.
    pub const NAMES: [&'static str; 5] = ["f1", "iou", "format", "length", "jaccard"];

    fn slot(&mut self, name: &str) -> Option<&mut f64> {
        Some(match name {
            "f1" => &mut self.f1,
            "iou" => &mut self.iou,
            "format" => &mut self.format,
            "length" => &mut self.length,
            "jaccard" => &mut self.jaccard,
            _ => return None,
        })
    }

    fn values(&self) -> [f64; 5] {
        [self.f1, self.iou, self.format, self.length, self.jaccard]
    }

    /// Every weight finite and non-negative, at least one positive.
    pub fn validate(&self) -> Result<(), RewardError> {
        for (name, w) in Self::NAMES.iter().zip(self.values()) {
            if !w.is_finite() || w < 0.0 {
                return Err(RewardError::Config(format!("weight {name} = {w}: weights must be finite and >= 0")));
            }
        }
        if self.values().iter().all(|&w| w == 0.0) {
            return Err(RewardError::Config("all weights are 0: give at least one positive weight".into()));
        }
        Ok(())
    }
}

/// Parses `f1=0.5,iou=0.3,format=0.1,length=0.1,jaccard=0`.
impl FromStr for Weights {
    type Err = RewardError;

    fn from_str(s: &str) -> Result<Self, RewardError> {
        let mut weights = Weights::default();
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| RewardError::Config(format!("'{part}' is not name=value (e.g. f1=0.5)")))?;
            let name = name.trim();
            let slot = weights.slot(name).ok_or_else(|| {
                RewardError::Config(format!(
                    "unknown component '{name}'; the components are {}",
                    Weights::NAMES.join(", ")
                ))
            })?;
            *slot = value
                .trim()
                .parse()
                .map_err(|_| RewardError::Config(format!("weight {name} = '{}' is not a number", value.trim())))?;
            if seen.contains(&name) {
                return Err(RewardError::Config(format!("weight {name} is given twice")));
            }
            seen.push(name);
        }
        weights.validate()?;
        Ok(weights)
    }
}

/// The named weightings of docs/drpo.md section 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    /// QoQ-Med code: 0.5 F1 + 0.3 IoU + 0.1 format + 0.1 length.
    #[default]
    #[serde(rename = "qoq-med")]
    QoqMed,
    /// Paper: 0.6 F1 + 0.2 IoU + 0.2 auxiliary (0.1 format + 0.1 length).
    #[serde(rename = "paper")]
    Paper,
    /// QoQ-Med3 code: 0.5 F1 + 0.2 IoU + 0.1 format + 0.2 Jaccard.
    #[serde(rename = "qoq-med3")]
    QoqMed3,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::QoqMed, Preset::Paper, Preset::QoqMed3];

    pub fn weights(self) -> Weights {
        let w = |f1, iou, format, length, jaccard| Weights { f1, iou, format, length, jaccard };
        match self {
            Preset::QoqMed => w(0.5, 0.3, 0.1, 0.1, 0.0),
            Preset::Paper => w(0.6, 0.2, 0.1, 0.1, 0.0),
            Preset::QoqMed3 => w(0.5, 0.2, 0.1, 0.0, 0.2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::QoqMed => "qoq-med",
            Preset::Paper => "paper",
            Preset::QoqMed3 => "qoq-med3",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = RewardError;

    fn from_str(s: &str) -> Result<Self, RewardError> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            RewardError::Config(format!("unknown preset '{s}'; the presets are qoq-med, paper, qoq-med3"))
        })
    }
}

/// The `[reward]` table of a run configuration.
///
/// ```toml
/// [reward]
/// preset = "qoq-med"          # or: weights = { f1 = 0.6, iou = 0.2, format = 0.2 }
/// iou_aggregation = "mean"    # or "max" (the paper)
/// normalize_labels = true     # false: case-sensitive exact labels, as the original
/// lenient_json = false        # true: also read single-quoted / trailing-comma blocks (+0.1 format)
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub preset: Option<Preset>,
    pub weights: Option<Weights>,
    pub iou_aggregation: IouAggregation,
    pub normalize_labels: bool,
    pub lenient_json: bool,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            preset: None,
            weights: None,
            iou_aggregation: IouAggregation::Mean,
            normalize_labels: true,
            lenient_json: false,
        }
    }
}

impl RewardConfig {
    /// The weights in force: explicit `weights`, else the preset's (default `qoq-med`).
    pub fn resolved_weights(&self) -> Result<Weights, RewardError> {
        match (self.preset, self.weights) {
            (Some(_), Some(_)) => Err(RewardError::Config(
                "both 'preset' and 'weights' are set: keep one (weights replace the preset entirely)".into(),
            )),
            (_, Some(w)) => w.validate().map(|_| w),
            (preset, None) => Ok(preset.unwrap_or_default().weights()),
        }
    }
}

/// The ground truth one response is scored against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// Labels joined by ", " (or the open-ended reference answer).
    pub answer: &'a str,
    pub boxes: &'a [BBox],
    /// Segmentation mask at the size of the resized image the model saw (see
    /// [`Mask::resized`]); used instead of `boxes` when non-empty.
    pub mask: Option<&'a Mask>,
}

/// Every component of one response's reward, each in [0, 1], and their weighted sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub f1: f64,
    pub iou: f64,
    pub format: f64,
    pub length: f64,
    pub jaccard: f64,
    pub overall: f64,
}

impl Scores {
    /// `(name, value)` of each component, in [`Weights::NAMES`] order.
    pub fn components(&self) -> [(&'static str, f64); 5] {
        let v = [self.f1, self.iou, self.format, self.length, self.jaccard];
        std::array::from_fn(|i| (Weights::NAMES[i], v[i]))
    }
}

/// A resolved reward function.
///
/// ```
/// use qoq_rewards::{RewardConfig, Scorer, Target};
/// let scorer = Scorer::new(&RewardConfig::default()).unwrap();
/// let response = "<think>Consolidation in the right lower lobe.</think>\n\
///     ```json\n[{\"bbox_2d\": [10, 10, 50, 50], \"label\": \"consolidation\"}]\n```\n\
///     \\boxed{Pneumonia}";
/// let boxes = [[10.0, 10.0, 50.0, 50.0]];
/// let s = scorer.score(response, &Target { answer: "pneumonia", boxes: &boxes, ..Default::default() });
/// assert_eq!((s.f1, s.iou, s.format), (1.0, 1.0, 1.0));
/// ```
#[derive(Debug, Clone)]
pub struct Scorer {
    pub weights: Weights,
    pub iou_aggregation: IouAggregation,
    pub labels: LabelOptions,
    pub lenient_json: bool,
}

impl Scorer {
    pub fn new(config: &RewardConfig) -> Result<Self, RewardError> {
        Ok(Self {
            weights: config.resolved_weights()?,
            iou_aggregation: config.iou_aggregation,
            labels: LabelOptions { normalize: config.normalize_labels },
            lenient_json: config.lenient_json,
        })
    }

    /// Score one response. Never fails: unreadable parts score 0.
    pub fn score(&self, response: &str, target: &Target<'_>) -> Scores {
        let blocks = fenced_blocks(response);
        let boxes = predicted_boxes(&blocks, self.lenient_json);
        let grounding = GroundingTarget { boxes: target.boxes, mask: target.mask };
        let mut s = Scores {
            f1: f1_reward(response, target.answer, self.labels),
            iou: iou_reward(&boxes, &grounding, self.iou_aggregation),
            format: format_reward(response, &blocks, self.lenient_json),
            length: length_reward(response),
            jaccard: jaccard_reward(response, target.answer),
            overall: 0.0,
        };
        let w = &self.weights;
        s.overall = w.f1 * s.f1 + w.iou * s.iou + w.format * s.format + w.length * s.length + w.jaccard * s.jaccard;
        s
    }

    /// Score many responses in parallel (rayon); results are in input order.
    pub fn score_batch(&self, items: &[(&str, Target<'_>)]) -> Vec<Scores> {
        items.par_iter().map(|(response, target)| self.score(response, target)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse_bad_input() {
        let w: Weights = "f1=0.5, iou=0.3,format=0.1,length=0.1,jaccard=0".parse().unwrap();
        assert_eq!(w, Preset::QoqMed.weights());
        let w: Weights = "jaccard=1".parse().unwrap();
        assert_eq!(w.jaccard, 1.0);
        for (bad, needle) in [
            ("f1=0.5,bleu=0.5", "unknown component 'bleu'"),
            ("f1", "not name=value"),
            ("f1=x", "'x' is not a number"),
            ("f1=-1", "must be finite"),
            ("f1=inf", "must be finite"),
            ("f1=0", "all weights are 0"),
            ("f1=0.5,f1=0.5", "given twice"),
        ] {
            let err = bad.parse::<Weights>().unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn presets_match_the_spec() {
        assert_eq!(
            "paper".parse::<Preset>().unwrap().weights(),
            Weights { f1: 0.6, iou: 0.2, format: 0.1, length: 0.1, jaccard: 0.0 }
        );
        assert_eq!(Preset::QoqMed3.weights(), Weights { f1: 0.5, iou: 0.2, format: 0.1, length: 0.0, jaccard: 0.2 });
        assert!("qoq".parse::<Preset>().unwrap_err().to_string().contains("qoq-med, paper, qoq-med3"));
        for p in Preset::ALL {
            let sum: f64 = p.weights().values().iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn reward_table_from_toml() {
        let c: RewardConfig = toml::from_str("preset = \"qoq-med3\"\niou_aggregation = \"max\"").unwrap();
        assert_eq!(c.resolved_weights().unwrap(), Preset::QoqMed3.weights());
        assert_eq!(c.iou_aggregation, IouAggregation::Max);
        let c: RewardConfig = toml::from_str("weights = { f1 = 1.0 }").unwrap();
        assert_eq!(c.resolved_weights().unwrap().f1, 1.0);
        let c: RewardConfig = toml::from_str("preset = \"paper\"\nweights = { f1 = 1.0 }").unwrap();
        assert!(c.resolved_weights().is_err());
        let err = toml::from_str::<RewardConfig>("weight = { f1 = 1.0 }").unwrap_err().to_string();
        assert!(err.contains("unknown field `weight`"), "{err}");
        assert!(toml::from_str::<RewardConfig>("weights = { bleu = 1.0 }").is_err());
        assert_eq!(RewardConfig::default().resolved_weights().unwrap(), Preset::QoqMed.weights());
    }

    #[test]
    fn overall_is_the_weighted_sum_and_batches_keep_order() {
        let scorer = Scorer::new(&RewardConfig::default()).unwrap();
        let gt = [[0.0, 0.0, 10.0, 10.0]];
        let responses: Vec<String> = (0..64)
            .map(|i| format!("```json\n[{{\"bbox_2d\": [0, 0, {i}, 10], \"label\": \"x\"}}]\n``` \\boxed{{a}}"))
            .collect();
        let items: Vec<(&str, Target)> =
            responses.iter().map(|r| (r.as_str(), Target { answer: "a", boxes: &gt, ..Default::default() })).collect();
        let scores = scorer.score_batch(&items);
        for (i, s) in scores.iter().enumerate() {
            let iou = (i.min(10) as f64 * 10.0) / 100.0_f64.max(i as f64 * 10.0);
            assert!((s.iou - iou).abs() < 1e-12, "{i}: {} vs {iou}", s.iou);
            let overall = 0.5 * s.f1 + 0.3 * s.iou + 0.1 * s.format + 0.1 * s.length;
            assert_eq!(s.overall, overall);
        }
    }
}
