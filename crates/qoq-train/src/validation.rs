//! Validation: one answer per held-out sample at `validation.temperature` (0: greedy),
//! through the evaluation path of the `eval` tool ([`crate::evaluation`]): the same
//! rewards and the same paper's accuracy / F1 / Jaccard per domain and dataset.

use std::time::Instant;

use qoq_rewards::Scores;

use crate::evaluation::{held_out_loader, report, EvalSettings};
use crate::metrics::Metrics;
use crate::{TrainError, Trainer};

impl Trainer {
    /// Generates for the held-out split (n = 1) and reports rewards and the paper's
    /// accuracy / F1 per domain and dataset.
    pub fn validate(&mut self) -> Result<Metrics, TrainError> {
        let started = Instant::now();
        let v = self.config.validation.clone();
        let (shards, loader_config) = self.config.loader().map_err(TrainError::Config)?;
        let shards = v.shards.clone().unwrap_or(shards);
        let mut loader = held_out_loader(&shards, &v.splits, loader_config, self.policy.ecg().is_some())?;
        let samples = loader.by_ref().take(v.max_samples).collect::<Result<Vec<_>, _>>()?;
        let settings = EvalSettings {
            temperature: v.temperature,
            max_new_tokens: v.max_new_tokens.unwrap_or(self.config.rl.max_new_tokens),
            samples_per_prompt: 1,
            batch_size: v.batch_size,
            masks: false,
        };
        let ordinals: Vec<usize> = (0..samples.len()).collect();
        let rows = self.answer(&samples, &ordinals, &settings, u64::MAX - self.state.step())?;
        let mut m = Metrics::new();
        let n = rows.len().max(1) as f64;
        m.insert("val/reward/overall".into(), rows.iter().map(|r| r.scores.overall).sum::<f64>() / n);
        for (i, (name, _)) in Scores::default().components().iter().enumerate() {
            let mean = rows.iter().map(|r| r.scores.components()[i].1).sum::<f64>() / n;
            m.insert(format!("val/reward/{name}"), mean);
        }
        m.extend(report(&rows, self.scorer.labels).flat());
        m.insert("timing_s/validation".into(), started.elapsed().as_secs_f64());
        crate::release_freed_memory();
        Ok(m)
    }
}
