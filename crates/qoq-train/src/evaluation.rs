//! Evaluation: answers to held-out samples from the rollout engine (greedy unless a
//! temperature is given), scored with the run's rewards, and the paper's report over them
//! (docs/evaluation.md). The trainer's validation and the `eval` tool both answer through
//! [`Trainer::answer`] and report through [`report`], so their figures agree.
//!
//! ```no_run
//! use qoq_train::evaluation::{report, EvalSettings};
//! # fn demo(trainer: &mut qoq_train::Trainer, samples: &[qoq_data::Sample]) -> Result<(), qoq_train::TrainError> {
//! let ordinals: Vec<usize> = (0..samples.len()).collect();
//! let rows = trainer.answer(samples, &ordinals, &EvalSettings::greedy(48, 16), 0)?;
//! let figures = report(&rows, Default::default());
//! println!("F1 {:.3}", figures.overall.metrics.f1);
//! # Ok(()) }
//! ```

use std::path::Path;

use qoq_data::{Loader, LoaderConfig, Sample};
use qoq_rewards::answer::LabelOptions;
use qoq_rewards::eval::{EvalReport, Evaluator};
use qoq_rewards::{BBox, Scores};
use serde::{Deserialize, Serialize};

use crate::rollout::EngineSizing;
use crate::{TrainError, Trainer};

/// How the answers are sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSettings {
    /// 0: greedy.
    pub temperature: f64,
    pub max_new_tokens: usize,
    /// Answers per sample (K); each is a row.
    pub samples_per_prompt: usize,
    /// Prompts per prefill, and as many x K decoding slots.
    pub batch_size: usize,
    /// Encode each sample's mask as PNG into its rows (`eval` writes them for `score`;
    /// validation needs none).
    pub masks: bool,
}

impl EvalSettings {
    /// One greedy answer per sample.
    pub fn greedy(max_new_tokens: usize, batch_size: usize) -> Self {
        Self { temperature: 0.0, max_new_tokens, samples_per_prompt: 1, batch_size, masks: false }
    }
}

/// One answer to one sample, scored: a line of `eval`'s `samples.jsonl`, which `score`
/// reads back (`gt_boxes`, `image_size` and the mask file let it rescore).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub id: String,
    /// Which of the K answers (0 when K = 1).
    #[serde(default)]
    pub sample: usize,
    pub dataset: String,
    pub domain: String,
    pub response: String,
    pub answer: String,
    /// Ground-truth boxes in the pixels of the image the model saw.
    #[serde(default)]
    pub gt_boxes: Vec<BBox>,
    /// [width, height] of the image the model saw, when the sample has a mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<(u32, u32)>,
    /// The sample's segmentation mask as PNG, with [`EvalSettings::masks`] (written by
    /// `eval` to its own file).
    #[serde(default, skip_serializing)]
    pub mask_png: Option<Vec<u8>>,
    /// Response tokens, and whether it ended on a stop token.
    #[serde(default)]
    pub tokens: usize,
    #[serde(default)]
    pub stopped: bool,
    #[serde(flatten)]
    pub scores: Scores,
}

impl EvalRow {
    /// The key a resumed `eval` skips on: the sample's id, and the answer's index when
    /// there are several.
    pub fn key(&self) -> String {
        format!("{}#{}", self.id, self.sample)
    }
}

/// The paper's report over `rows`: per dataset, per domain, overall (unweighted means),
/// with the mean rewards of each level.
pub fn report(rows: &[EvalRow], labels: LabelOptions) -> EvalReport {
    let mut evaluator = Evaluator::new(labels);
    for r in rows {
        evaluator.add(&r.domain, &r.dataset, &r.response, &r.answer, Some(&r.scores));
    }
    evaluator.report()
}

/// Opens `shards` for one ordered pass over the rows of `splits` (every rank reads every
/// row; [`Trainer::answer`] splits them).
pub fn held_out_loader(
    shards: &Path,
    splits: &[String],
    base: LoaderConfig,
    ecg_encoder: bool,
) -> Result<Loader, TrainError> {
    let config = LoaderConfig {
        splits: Some(splits.to_vec()),
        epochs: Some(1),
        shuffle: false,
        domain_weights: None,
        ecg_encoder,
        ..base
    };
    Ok(Loader::open(shards, config)?)
}

impl Trainer {
    /// How the run's reward compares labels (the report must compare them the same way).
    pub fn label_options(&self) -> LabelOptions {
        self.scorer.labels
    }

    /// Which rank of how many this process is.
    pub fn data_parallel(&self) -> &crate::parallel::DataParallel {
        &self.dp
    }

    /// Whether the policy has an ECG path (its loader must check ECGs against it).
    pub fn policy_has_ecg(&self) -> bool {
        self.policy.ecg().is_some()
    }

    /// `settings.samples_per_prompt` answers to each of `samples`, scored with the run's
    /// reward. Every rank passes the same samples and gets every row back, in sample
    /// order then answer order; each rank generates a contiguous share. With a temperature,
    /// the draws of a sample are keyed by `key` and its `ordinals` entry (its place in the
    /// split), so a resumed or re-chunked evaluation draws the same answers.
    pub fn answer(
        &mut self,
        samples: &[Sample],
        ordinals: &[usize],
        settings: &EvalSettings,
        key: u64,
    ) -> Result<Vec<EvalRow>, TrainError> {
        if ordinals.len() != samples.len() {
            return Err(TrainError::Config(format!("{} ordinals for {} samples", ordinals.len(), samples.len())));
        }
        let share = self.dp.my_range(samples.len());
        let prompts = self.prepare_many(&samples[share.clone()].iter().collect::<Vec<_>>())?;
        let positions: Vec<usize> = ordinals[share].to_vec();
        let k = settings.samples_per_prompt.max(1);
        let sampling = self.sampling(settings.temperature, settings.max_new_tokens, k, 0);
        let batch = settings.batch_size.max(1);
        let sizing = EngineSizing { prefill_prompts: batch, slots: Some(batch * k), budget_bytes: None };
        let (sampled, _) = self.rollout(&prompts, &positions, &sampling, &sizing, key)?;
        let mut answered = vec![0usize; prompts.len()];
        let scored = self.score_rewards(&prompts, sampled);
        let mut mine = Vec::with_capacity(scored.len());
        for r in scored {
            let p = &prompts[r.response.prompt];
            let sample = answered[r.response.prompt];
            answered[r.response.prompt] += 1;
            let mask_png = match (&p.mask, settings.masks) {
                (Some(m), true) => {
                    Some(m.to_png().map_err(|e| TrainError::Config(format!("sample {}: mask: {e}", p.sample_id)))?)
                }
                _ => None,
            };
            mine.push((
                r.response.prompt,
                EvalRow {
                    id: p.sample_id.clone(),
                    sample,
                    dataset: p.dataset.clone(),
                    domain: p.domain.clone(),
                    response: r.response.text,
                    answer: p.answer.clone(),
                    gt_boxes: p.boxes.clone(),
                    image_size: p.mask.as_ref().map(|m| (m.width(), m.height())),
                    mask_png,
                    tokens: r.response.tokens.len(),
                    stopped: r.response.stopped,
                    scores: r.scores,
                },
            ));
        }
        // The engine returns rows in completion order: put them back in prompt order.
        mine.sort_by_key(|(prompt, row)| (*prompt, row.sample));
        // The mask bytes travel beside the row (samples.jsonl leaves them out).
        let wire: Vec<(EvalRow, Option<Vec<u8>>)> = mine
            .into_iter()
            .map(|(_, row)| {
                let mask = row.mask_png.clone();
                (row, mask)
            })
            .collect();
        let all = self.dp.gather(&wire)?;
        Ok(all
            .into_iter()
            .flatten()
            .map(|(mut row, mask)| {
                row.mask_png = mask;
                row
            })
            .collect())
    }
}
