//! One DRPO / GRPO step: gen -> reward -> old_log_prob / ref -> adv -> update_actor
//! (drpo.md sections 1-2; the phases' records are typed in `rollout.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use qoq_policy::forward_for_update_gated;
use tch::{Kind, Tensor};

use crate::advantage::Group;
use crate::loss::{batch_normaliser, policy_loss, LossConfig, LossTerms};
use crate::metrics::{advantage_metrics, memory_metrics, rollout_metrics, LossSums, Metrics};
use crate::micro_batches::{padding_fraction, Packing};
use crate::prompts::{response_mask, Prompt, PromptBatch};
use crate::rollout::{Advantaged, LogProbs, Ready, RolloutRecord};
use crate::summary::rollout_image;
use crate::{TrainError, Trainer};

/// Whether a periodic action (every `every` RL steps; 0: never) falls on RL step `n`.
fn rl_due(every: u64, n: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

impl Trainer {
    /// One RL step over `rl.prompts_per_step` prompts (this rank's share), its phases
    /// numbered as in the trainer's doc: gen, reward, old_log_prob / ref, adv, update_actor.
    pub(crate) fn rl_step(&mut self) -> Result<Metrics, TrainError> {
        let rl = self.config.rl.clone();
        let step = self.state.step() + 1;
        let g = rl.samples_per_prompt;
        let mut timing = BTreeMap::new();
        let t_step = Instant::now();

        // 1. gen: this rank's share of the global batch of prompts_per_step prompts.
        let t = Instant::now();
        let (prompts, positions) = self.next_prompts(rl.prompts_per_step, rl.prompts_per_update)?;
        let sampling = self.sampling(rl.temperature, rl.max_new_tokens, g, 0);
        let (sampled, engine) = self.rollout(&prompts, &positions, &sampling, &self.rl_engine_sizing(), step)?;
        timing.insert("gen", t.elapsed().as_secs_f64());
        // The KV arena and the sampling buffers are gone: their pages go back (memory.rs).
        crate::release_freed_memory();

        // 2. reward
        let t = Instant::now();
        let scored = self.score_rewards(&prompts, sampled);
        timing.insert("reward", t.elapsed().as_secs_f64());

        // 3. old_log_prob (and ref): the same forward as the update, so ratio = 1 at first;
        // also the same micro-batches, packed per optimizer batch.
        let t = Instant::now();
        let local_per_update = rl.prompts_per_update / self.dp.world() * g;
        let lengths: Vec<(usize, usize)> =
            scored.iter().map(|r| (prompts[r.response.prompt].ids.len(), r.response.tokens.len())).collect();
        let packings: Vec<Packing> =
            lengths.chunks(local_per_update).map(|l| Packing::new(l, rl.micro_batch, rl.micro_batch_tokens)).collect();
        let rows: Vec<(usize, &[i64])> =
            scored.iter().map(|r| (r.response.prompt, r.response.tokens.as_slice())).collect();
        let old = {
            let _whole = self.whole_policy()?;
            self.score_rows(self.policy.as_ref(), &prompts, &rows, &packings, local_per_update, rl.temperature)?
        };
        timing.insert("old_log_prob", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let refs = match &self.reference {
            Some(r) => {
                let _whole = self.whole_reference()?;
                Some(self.score_rows(r.as_ref(), &prompts, &rows, &packings, local_per_update, rl.temperature)?)
            }
            None => None,
        };
        timing.insert("ref", t.elapsed().as_secs_f64());
        crate::release_freed_memory();
        let logps: Vec<LogProbs> = match refs {
            Some(refs) => old.into_iter().zip(refs).map(|(old, r)| LogProbs { old, reference: Some(r) }).collect(),
            None => old.into_iter().map(|old| LogProbs { old, reference: None }).collect(),
        };

        // 4. adv over the GLOBAL batch: every rank's rewards, groups and lengths, in batch
        // order (position, then sample), so all ranks compute what one process would.
        let t = Instant::now();
        // Texts travel only when rank 0 writes this step's rollouts.
        let due = rl_due(self.config.run.rollouts_every, self.state.rl_steps_done + 1);
        let mine: Vec<RolloutRecord> = scored
            .iter()
            .zip(&logps)
            .map(|(r, logp)| {
                RolloutRecord::new(&prompts[r.response.prompt], positions[r.response.prompt], r, logp, due)
            })
            .collect();
        let mut all: Vec<RolloutRecord> = self.dp.gather(&mine)?.into_iter().flatten().collect();
        // Stable: each group keeps its sampling order.
        all.sort_by_key(|r| r.position);
        if all.len() != rl.prompts_per_step * g {
            return Err(TrainError::Config(format!(
                "gathered {} responses, expected {} (ranks disagree on the batch)",
                all.len(),
                rl.prompts_per_step * g
            )));
        }
        let groups: Vec<Group> = all
            .chunks(g)
            .map(|rs| Group { domain: rs[0].group.clone(), rewards: rs.iter().map(|r| r.scores.overall).collect() })
            .collect();
        let kl: Option<Vec<Vec<f64>>> = self
            .reference
            .is_some()
            .then(|| all.chunks(g).map(|rs| rs.iter().map(|r| r.kl.unwrap_or(0.0)).collect()).collect());
        let adv = self.state.drpo.advantages(&self.config.algorithm.advantages, &groups, kl.as_deref());
        // One advantage per response, group by group (G each), with its telemetry.
        let config = &self.config.algorithm.advantages;
        let all: Vec<Advantaged> = all
            .into_iter()
            .zip(adv.advantages.iter().flatten())
            .enumerate()
            .map(|(i, (record, &advantage))| Advantaged {
                record,
                advantage,
                telemetry: adv.response(i / g, i % g, config),
            })
            .collect();
        // Responses of one prompt are consecutive, G of them.
        let ready: Vec<Ready> = scored
            .into_iter()
            .zip(logps)
            .enumerate()
            .map(|(i, (r, logp))| Ready {
                advantage: all[positions[r.response.prompt] * g + i % g].advantage,
                response: r.response,
                logp,
            })
            .collect();
        timing.insert("adv", t.elapsed().as_secs_f64());

        // 5. update_actor: one epoch, prompts_per_update prompts per optimizer step, each
        // split over the ranks; losses normalised by the whole update batch.
        let t = Instant::now();
        let loss_config = self.config.algorithm.loss.clone();
        let updates_per_step = rl.prompts_per_step / rl.prompts_per_update;
        let total_updates = self.config.rl.steps * updates_per_step as u64;
        let mut sums = LossSums::default();
        let mut updates = 0.0;
        for (u, (batch, packing)) in ready.chunks(local_per_update).zip(&packings).enumerate() {
            let span = u * rl.prompts_per_update * g..(u + 1) * rl.prompts_per_update * g;
            let lengths: Vec<usize> = all[span].iter().map(|r| r.record.tokens).collect();
            let normaliser = batch_normaliser(loss_config.aggregation, &lengths);
            self.optimizer.zero_grad();
            self.idle_micro_batches(packing.batches.len())?;
            for rows in &packing.batches {
                let micro: Vec<&Ready> = rows.iter().map(|&i| &batch[i]).collect();
                let terms =
                    self.micro_batch_update(&prompts, &micro, &loss_config, normaliser, rl.temperature, &mut sums)?;
                self.after_backward();
                sums.add(&terms);
            }
            let lr = self.optimizer.config().lr_at(self.optimizer.steps(), total_updates);
            sums.grad_norm += self.optimizer_step(lr)?;
            sums.lr = lr;
            updates += 1.0;
        }
        sums.sum_over_ranks(&self.dp)?;
        timing.insert("update_actor", t.elapsed().as_secs_f64());
        self.state.rl_steps_done += 1;
        timing.insert("step", t_step.elapsed().as_secs_f64());

        // Logs (global figures).
        let mut m = Metrics::new();
        rollout_metrics(&mut m, &all, &rl);
        sums.report(&mut m, updates);
        advantage_metrics(&mut m, &adv, groups.len());
        m.insert("prompt_length/skipped".into(), self.prompts_skipped as f64);
        for (k, v) in &timing {
            m.insert(format!("timing_s/{k}"), *v);
        }
        let tokens: usize = all.iter().map(|r| r.record.tokens + r.record.prompt_tokens).sum();
        m.insert("perf/throughput".into(), tokens as f64 / timing["step"]);
        m.insert("perf/time_per_step".into(), timing["step"]);
        // This rank's rollout engine: live slots per decode step over its slots.
        m.insert("perf/rollout_slot_occupancy".into(), engine.occupancy);
        m.insert("perf/rollout_slots".into(), engine.slots as f64);
        let [padded, real]: [f64; 2] = self
            .dp
            .sum(&[
                packings.iter().map(|p| p.padded_tokens as f64).sum(),
                packings.iter().map(|p| p.real_tokens as f64).sum(),
            ])?
            .try_into()
            .map_err(|_| TrainError::Config("summing the padding over ranks gave a wrong count".into()))?;
        m.insert("perf/padding_fraction".into(), padding_fraction(padded, real));
        memory_metrics(&mut m, self.optimizer.state_bytes());
        if due && self.dp.is_main() {
            self.write_rollouts(step, &all)?;
        }
        if self.dp.is_main()
            && (rl_due(self.config.run.image_summary_every, self.state.rl_steps_done)
                || (self.config.run.image_summary_every > 0 && self.state.rl_steps_done == 1))
        {
            if let (Some(r), Some(events)) = (ready.first(), self.events.as_mut()) {
                if let Some(img) = rollout_image(&prompts[r.response.prompt], &r.response.text) {
                    events.image("rollout/boxes", step as i64, &img).map_err(|e| TrainError::io(events.path(), e))?;
                }
            }
        }
        Ok(m)
    }

    /// One micro-batch's share of the update: its loss, backpropagated into the
    /// parameters' gradients (chunked log-probs, recomputation per `[memory]`).
    fn micro_batch_update(
        &self,
        prompts: &[Prompt],
        micro: &[&Ready],
        config: &LossConfig,
        normaliser: f64,
        temperature: f64,
        sums: &mut LossSums,
    ) -> Result<LossTerms, TrainError> {
        let batch = PromptBatch::new(
            &micro.iter().map(|r| &prompts[r.response.prompt]).collect::<Vec<_>>(),
            self.tokens.pad,
            self.device,
        )?;
        let inputs = batch.inputs();
        let tokens: Vec<Vec<i64>> = micro.iter().map(|r| r.response.tokens.clone()).collect();
        let forward = forward_for_update_gated(
            self.policy.as_ref(),
            &inputs,
            &tokens,
            temperature,
            &self.config.memory.update_options(),
            self.gate(),
        )?;
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let mask = response_mask(&lengths, self.device);
        let pad = |rows: Vec<&[f32]>| -> Tensor {
            let t = lengths.iter().copied().max().unwrap_or(0);
            let mut v = vec![0f32; rows.len() * t];
            for (i, r) in rows.iter().enumerate() {
                v[i * t..i * t + r.len()].copy_from_slice(r);
            }
            Tensor::from_slice(&v).view([rows.len() as i64, t as i64]).to_device(self.device)
        };
        let old = pad(micro.iter().map(|r| r.logp.old.as_slice()).collect());
        let reference = micro
            .iter()
            .all(|r| r.logp.reference.is_some())
            .then(|| pad(micro.iter().map(|r| r.logp.reference.as_deref().unwrap_or(&[])).collect()));
        let adv: Vec<f32> = micro.iter().map(|r| r.advantage as f32).collect();
        let adv = Tensor::from_slice(&adv).to_device(self.device);
        sums.entropy += (&forward.entropy * &mask).sum(Kind::Float).double_value(&[]);
        sums.tokens += lengths.iter().sum::<usize>() as f64;
        // The loss is a function of the log-probs only: differentiate it there, then hand
        // that gradient to the model's backward (exact; see qoq_policy::forward_for_update).
        let logp = forward.logp.detach().set_requires_grad(true);
        let terms = policy_loss(&logp, &old, reference.as_ref(), &adv, &mask, config, normaliser);
        terms.loss.backward();
        forward.backward_gated(self.policy.as_ref(), &inputs, &logp.grad(), self.gate())?;
        Ok(terms)
    }
}
