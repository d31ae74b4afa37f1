//! The supervised warm start: one optimizer step per batch of prompts and their
//! reference answers (`[sft]`; drpo.md section 4).

use std::time::Instant;

use qoq_policy::forward_for_update_gated;
use tch::Kind;

use crate::loss::sft_loss;
use crate::metrics::{memory_metrics, Metrics};
use crate::micro_batches::{padding_fraction, Packing};
use crate::prompts::{response_mask, PromptBatch};
use crate::{TrainError, Trainer};

impl Trainer {
    /// One SFT step: teacher-forced cross-entropy on the reference answers of
    /// `sft.batch_size` prompts (the global batch), token mean over the batch, one
    /// optimizer step.
    pub(crate) fn sft_step(&mut self) -> Result<Metrics, TrainError> {
        let t0 = Instant::now();
        let batch_size = self.config.sft.batch_size;
        let (prompts, _) = self.next_prompts(batch_size, batch_size)?;
        let targets: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| {
                let mut ids: Vec<i64> = self.tokenizer.encode(&p.reference)?.into_iter().map(i64::from).collect();
                ids.push(i64::from(self.tokenizer.im_end_id()));
                Ok(ids)
            })
            .collect::<Result<_, qoq_policy::PolicyError>>()?;
        // Token mean over the global batch.
        let normaliser = self.dp.sum(&[targets.iter().map(Vec::len).sum::<usize>() as f64])?[0].max(1.0);
        self.optimizer.zero_grad();
        let mut loss_sum = 0.0;
        let mut correct = 0.0;
        let lengths: Vec<(usize, usize)> = prompts.iter().zip(&targets).map(|(p, t)| (p.ids.len(), t.len())).collect();
        let packing = Packing::new(&lengths, self.config.sft.micro_batch, self.config.sft.micro_batch_tokens);
        self.idle_micro_batches(packing.batches.len())?;
        for chunk in &packing.batches {
            let batch = PromptBatch::new(
                &chunk.iter().map(|&i| &prompts[i]).collect::<Vec<_>>(),
                self.tokens.pad,
                self.device,
            )?;
            let responses: Vec<Vec<i64>> = chunk.iter().map(|&i| targets[i].clone()).collect();
            let inputs = batch.inputs();
            let forward = forward_for_update_gated(
                self.policy.as_ref(),
                &inputs,
                &responses,
                1.0,
                &self.config.memory.update_options(),
                self.gate(),
            )?;
            let mask = response_mask(&responses.iter().map(Vec::len).collect::<Vec<_>>(), self.device);
            // Differentiated at the log-probs, then through the model (see rl_step.rs).
            let logp = forward.logp.detach().set_requires_grad(true);
            let loss = sft_loss(&logp, &mask, normaliser);
            loss.backward();
            forward.backward_gated(self.policy.as_ref(), &inputs, &logp.grad(), self.gate())?;
            self.after_backward();
            loss_sum += loss.double_value(&[]);
            // exp(logp) > 0.5 means the reference token is the arg-max.
            correct +=
                tch::no_grad(|| (logp.exp().gt(0.5).to_kind(Kind::Float) * &mask).sum(Kind::Float).double_value(&[]));
        }
        let lr = self.optimizer.config().lr_at(self.optimizer.steps(), self.config.sft.steps);
        let grad_norm = self.optimizer_step(lr)?;
        self.state.sft_steps_done += 1;
        let sums = self.dp.sum(&[loss_sum, correct, packing.padded_tokens as f64, packing.real_tokens as f64])?;
        let [loss_sum, correct, padded, real]: [f64; 4] =
            sums.try_into().map_err(|_| TrainError::Config("summing over ranks gave a wrong count".into()))?;
        let mut m = Metrics::new();
        m.insert("sft/loss".into(), loss_sum);
        m.insert("sft/token_accuracy".into(), correct / normaliser);
        m.insert("actor/grad_norm".into(), grad_norm);
        m.insert("actor/lr".into(), lr);
        m.insert("timing_s/step".into(), t0.elapsed().as_secs_f64());
        m.insert("perf/padding_fraction".into(), padding_fraction(padded, real));
        // Tokens (prompt + response) through the model per second, over the ranks, as verl.
        m.insert("perf/throughput".into(), real / t0.elapsed().as_secs_f64());
        memory_metrics(&mut m, self.optimizer.state_bytes());
        Ok(m)
    }
}
