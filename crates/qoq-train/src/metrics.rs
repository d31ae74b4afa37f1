//! The logged figures: the loss sums of a step's updates, the rollout statistics, the
//! DRPO figures per domain and memory. Names follow verl / EasyR1.

use std::collections::BTreeMap;

use qoq_rewards::Scores;

use crate::advantage::AdvantageOutput;
use crate::config::RlSection;
use crate::loss::LossTerms;
use crate::parallel::DataParallel;
use crate::rollout::Advantaged;
use crate::TrainError;

/// The figures of one step, by metric name.
pub type Metrics = BTreeMap<String, f64>;

/// Running sums of the loss figures over a step's optimizer updates.
#[derive(Default)]
pub(crate) struct LossSums {
    pub pg_loss: f64,
    pub kl_loss: f64,
    pub clip_higher: f64,
    pub clip_lower: f64,
    pub ppo_kl: f64,
    pub entropy: f64,
    pub tokens: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

impl LossSums {
    pub fn add(&mut self, t: &LossTerms) {
        self.pg_loss += t.pg_loss;
        self.kl_loss += t.kl_loss;
        self.clip_higher += t.pg_clipfrac_higher;
        self.clip_lower += t.pg_clipfrac_lower;
        self.ppo_kl += t.ppo_kl;
    }

    /// Adds up the ranks' shares (the gradient norm and learning rate are global already).
    pub fn sum_over_ranks(&mut self, dp: &DataParallel) -> Result<(), TrainError> {
        let v = dp.sum(&[
            self.pg_loss,
            self.kl_loss,
            self.clip_higher,
            self.clip_lower,
            self.ppo_kl,
            self.entropy,
            self.tokens,
        ])?;
        [self.pg_loss, self.kl_loss, self.clip_higher, self.clip_lower, self.ppo_kl, self.entropy, self.tokens] =
            v.try_into().expect("seven sums");
        Ok(())
    }

    /// Per-update means (each update's shares already sum to that update's value).
    pub fn report(&self, m: &mut Metrics, updates: f64) {
        let u = updates.max(1.0);
        m.insert("actor/pg_loss".into(), self.pg_loss / u);
        m.insert("actor/kl_loss".into(), self.kl_loss / u);
        m.insert("actor/pg_clipfrac".into(), self.clip_higher / u);
        m.insert("actor/pg_clipfrac_lower".into(), self.clip_lower / u);
        m.insert("actor/ppo_kl".into(), self.ppo_kl / u);
        m.insert("actor/entropy".into(), self.entropy / self.tokens.max(1.0));
        m.insert("actor/grad_norm".into(), self.grad_norm / u);
        m.insert("actor/lr".into(), self.lr);
    }
}

/// Mean, max and min (zeros when empty).
fn stats(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v.iter().copied().fold(f64::MIN, f64::max), v.iter().copied().fold(f64::MAX, f64::min))
}

/// The rollout figures of the global batch: rewards, advantages, response and prompt
/// lengths (`all` in batch order, G responses per prompt).
pub(crate) fn rollout_metrics(m: &mut Metrics, all: &[Advantaged], rl: &RlSection) {
    let (mean, max, min) = stats(all.iter().map(|r| r.record.scores.overall));
    m.insert("reward/overall".into(), mean);
    m.insert("critic/score/mean".into(), mean);
    m.insert("critic/score/max".into(), max);
    m.insert("critic/score/min".into(), min);
    for (i, (name, _)) in Scores::default().components().iter().enumerate() {
        let (mean, _, _) = stats(all.iter().map(|r| r.record.scores.components()[i].1));
        m.insert(format!("reward/{name}"), mean);
    }
    let (mean, max, min) = stats(all.iter().map(|r| r.advantage));
    m.insert("critic/advantages/mean".into(), mean);
    m.insert("critic/advantages/max".into(), max);
    m.insert("critic/advantages/min".into(), min);
    let (mean, max, min) = stats(all.iter().map(|r| r.record.tokens as f64));
    m.insert("response_length/mean".into(), mean);
    m.insert("response_length/max".into(), max);
    m.insert("response_length/min".into(), min);
    let clipped = all.iter().filter(|r| !r.record.stopped && r.record.tokens >= rl.max_new_tokens).count();
    m.insert("response_length/clip_ratio".into(), clipped as f64 / all.len().max(1) as f64);
    let (mean, max, min) = stats(all.chunks(rl.samples_per_prompt.max(1)).map(|rs| rs[0].record.prompt_tokens as f64));
    m.insert("prompt_length/mean".into(), mean);
    m.insert("prompt_length/max".into(), max);
    m.insert("prompt_length/min".into(), min);
}

/// The DRPO figures per domain (`drpo/<domain>/...`: reward_mean, questions, temperature,
/// clusters (the k used), elbow_clusters (the elbow's own k, where computed), inertia (of
/// the clustering used), scale_mean) and the share of groups whose rewards are all equal,
/// out of `groups`.
pub(crate) fn advantage_metrics(m: &mut Metrics, adv: &AdvantageOutput, groups: usize) {
    for (name, s) in &adv.domains {
        m.insert(format!("drpo/{name}/reward_mean"), s.reward_mean);
        m.insert(format!("drpo/{name}/questions"), s.questions as f64);
        m.insert(format!("drpo/{name}/temperature"), s.temperature);
        m.insert(format!("drpo/{name}/clusters"), s.clusters as f64);
        if let Some(k) = s.elbow_clusters {
            m.insert(format!("drpo/{name}/elbow_clusters"), k as f64);
        }
        m.insert(format!("drpo/{name}/inertia"), s.inertia);
        m.insert(format!("drpo/{name}/scale_mean"), s.scale_mean);
    }
    m.insert("frac_reward_zero_std".into(), adv.zero_std_groups as f64 / groups.max(1) as f64);
}

/// Peak resident memory (where the platform tells) and this rank's optimizer state.
pub(crate) fn memory_metrics(m: &mut Metrics, optimizer_state_bytes: usize) {
    if let Some(rss) = crate::memory::peak_rss_mib() {
        m.insert("perf/max_memory_rss_mib".into(), rss);
    }
    m.insert("perf/optimizer_state_mib".into(), optimizer_state_bytes as f64 / (1 << 20) as f64);
}
