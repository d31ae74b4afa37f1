//! Validation: one answer per held-out sample at `validation.temperature` (0: greedy),
//! scored like the training rewards and by the paper's accuracy / F1.

use std::time::Instant;

use qoq_data::{Loader, LoaderConfig};
use qoq_rewards::eval::Evaluator;
use qoq_rewards::Scores;

use crate::metrics::Metrics;
use crate::rollout::EngineSizing;
use crate::{TrainError, Trainer};

impl Trainer {
    /// Generates for the held-out split (n = 1) and reports rewards and the paper's
    /// accuracy / F1 per domain and dataset.
    pub fn validate(&mut self) -> Result<Metrics, TrainError> {
        let started = Instant::now();
        let v = self.config.validation.clone();
        let (shards, mut loader_config) = self.config.loader().map_err(TrainError::Config)?;
        loader_config = LoaderConfig {
            splits: Some(v.splits.clone()),
            epochs: Some(1),
            shuffle: false,
            domain_weights: None,
            ecg_encoder: self.policy.ecg().is_some(),
            ..loader_config
        };
        let mut loader = Loader::open(v.shards.as_deref().unwrap_or(&shards), loader_config)?;
        let mut samples = Vec::new();
        for s in loader.by_ref().take(v.max_samples) {
            samples.push(s?);
        }
        // Each rank answers a contiguous share; all figures are over every rank's answers.
        let share = self.dp.my_range(samples.len());
        let prompts = self.prepare_many(&samples[share.clone()].iter().collect::<Vec<_>>())?;
        let positions: Vec<usize> = share.collect();
        let sampling = self.sampling(v.temperature, v.max_new_tokens.unwrap_or(self.config.rl.max_new_tokens), 1, 0);
        // One response per prompt: batch_size prompts per prefill and as many slots.
        let sizing = EngineSizing { prefill_prompts: v.batch_size, slots: Some(v.batch_size), budget_bytes: None };
        let (sampled, _) = self.rollout(&prompts, &positions, &sampling, &sizing, u64::MAX - self.state.step())?;
        let scored = self.score_rewards(&prompts, sampled);
        let mine: Vec<(String, String, String, String, Scores)> = scored
            .iter()
            .map(|r| {
                let p = &prompts[r.response.prompt];
                (p.domain.clone(), p.dataset.clone(), r.response.text.clone(), p.answer.clone(), r.scores)
            })
            .collect();
        let answers: Vec<_> = self.dp.gather(&mine)?.into_iter().flatten().collect();
        let mut evaluator = Evaluator::new(self.scorer.labels);
        let mut m = Metrics::new();
        for (domain, dataset, text, answer, _) in &answers {
            evaluator.add(domain, dataset, text, answer);
        }
        let n = answers.len().max(1) as f64;
        m.insert("val/reward/overall".into(), answers.iter().map(|a| a.4.overall).sum::<f64>() / n);
        for (i, (name, _)) in Scores::default().components().iter().enumerate() {
            let mean = answers.iter().map(|a| a.4.components()[i].1).sum::<f64>() / n;
            m.insert(format!("val/reward/{name}"), mean);
        }
        m.extend(evaluator.report().flat());
        m.insert("timing_s/validation".into(), started.elapsed().as_secs_f64());
        Ok(m)
    }
}
