//! The prompts of a step: read from the loader, prepared (image and chat template),
//! checked against the length limit, and shared among the ranks.

use std::collections::HashMap;

use qoq_data::Sample;
use rayon::prelude::*;

use crate::prompts::{prepare, Prompt};
use crate::{TrainError, Trainer};

impl Trainer {
    /// This rank's prompts of the next global batch of `n` usable prompts, cut in blocks
    /// of `block` (see [`DataParallel::owner`](crate::parallel::DataParallel::owner)), with their positions in the batch. Every
    /// rank reads the same samples and prepares only those it will train on; prompts over
    /// the length limit are skipped (and counted) exactly as one process would skip them.
    pub(crate) fn next_prompts(&mut self, n: usize, block: usize) -> Result<(Vec<Prompt>, Vec<usize>), TrainError> {
        let mut samples: Vec<Sample> = Vec::with_capacity(n);
        let mut usable: Vec<usize> = Vec::with_capacity(n);
        let mut prepared: HashMap<usize, Prompt> = HashMap::new();
        while usable.len() < n {
            let first = samples.len();
            let need = n - usable.len();
            for _ in 0..need {
                match self.loader.next() {
                    Some(s) => samples.push(s?),
                    None => {
                        return Err(TrainError::Config(
                            "the data ran out: set data.epochs larger (or leave it unset to cycle)".into(),
                        ))
                    }
                }
            }
            // Sample `first + i` takes position `usable.len() + i` unless one is skipped.
            let mine: Vec<usize> = (first..first + need)
                .filter(|&c| self.dp.owner(usable.len() + c - first, block) == self.dp.rank())
                .collect();
            let fits: Vec<(usize, bool)> = self
                .prepare_many(&mine.iter().map(|&c| &samples[c]).collect::<Vec<_>>())?
                .into_iter()
                .zip(&mine)
                .map(|(p, &c)| {
                    let fits = p.ids.len() <= self.config.prompt.max_prompt_tokens;
                    prepared.insert(c, p);
                    (c, fits)
                })
                .collect();
            let fits: HashMap<usize, bool> = self.dp.gather(&fits)?.into_iter().flatten().collect();
            for c in first..first + need {
                if fits.get(&c).copied().unwrap_or(false) {
                    usable.push(c);
                } else {
                    self.prompts_skipped += 1;
                }
            }
        }
        let positions = self.dp.my_positions(n, block);
        // A skip shifts later samples to other positions: prepare what this rank now lacks.
        let lacking: Vec<&Sample> =
            positions.iter().map(|&p| usable[p]).filter(|c| !prepared.contains_key(c)).map(|c| &samples[c]).collect();
        let mut extra = self.prepare_many(&lacking)?.into_iter();
        let prompts = positions
            .iter()
            .map(|&p| prepared.remove(&usable[p]).or_else(|| extra.next()).expect("one prepared prompt per position"))
            .collect();
        Ok((prompts, positions))
    }

    /// Prepares `samples` in parallel (image, chat template, token ids), in order.
    pub(crate) fn prepare_many(&self, samples: &[&Sample]) -> Result<Vec<Prompt>, TrainError> {
        let suffix = &self.config.prompt.suffix;
        let key = self.config.prompt.domain_key;
        let (processor, tokenizer, format) = (&self.processor, &self.tokenizer, self.policy.prompt_format());
        let with_ecg = self.policy.ecg().is_some();
        samples.par_iter().map(|s| prepare(s, processor, tokenizer, suffix, key, format, with_ecg)).collect()
    }
}
