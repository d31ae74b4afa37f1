//! Advantages from rewards: GRPO, Dr.GRPO and DRPO (docs/drpo.md section 1).
//!
//! Everything here works on the GLOBAL batch (all ranks' groups, gathered), so every rank
//! computes the same numbers as a single process would.
//!
//! ```
//! use qoq_train::advantage::{AdvantageConfig, DrpoHistory, Estimator, Group};
//! let config = AdvantageConfig { estimator: Estimator::Drpo, ..Default::default() };
//! let mut history = DrpoHistory::default();
//! let groups = vec![
//!     Group { domain: "ct".into(), rewards: vec![0.9, 0.1, 0.5, 0.7] },
//!     Group { domain: "ecg".into(), rewards: vec![0.2, 0.0, 0.0, 0.4] },
//! ];
//! let out = history.advantages(&config, &groups, None);
//! assert_eq!(out.advantages.len(), 2);
//! assert_eq!(out.domains["ct"].questions, 1);
//! // Every advantage follows from its group's telemetry (what a rollout row carries).
//! let t = &out.telemetry[0];
//! let a = t.damping[0] * t.scores[0] / (t.domain_temperature * t.cluster_temperature) / out.batch_norm;
//! assert!((a - out.advantages[0][0]).abs() < 1e-9);
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use rayon::prelude::*;

use crate::kmeans::{clusterings, elbow, elbow_cap, elbow_k, hysteresis_k, kmeans, Clustering, WeightedPoints};

/// Which advantage estimator (`advantage` in the `[algorithm]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// (r - mean_q) / (std_q + eps).
    Grpo,
    /// r - mean_q (no std division; Liu et al., "Understanding R1-Zero-Like Training").
    DrGrpo,
    /// GRPO scores rescaled by domain and difficulty-cluster temperatures.
    Drpo,
}

/// How the domain mean mu_d is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainMean {
    /// sum_c(mu_c / N_c) / sum_c(1 / N_c): the released code's.
    InverseClusterSize,
    /// The plain mean reward of the domain's history: the paper's.
    Plain,
}

/// How DRPO picks the number of clusters k of a domain (`k_selection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KSelection {
    /// The elbow rule of docs/drpo.md step 6, afresh at every clustering (the released code).
    Elbow,
    /// The elbow rule with a band around its tolerance, starting from the domain's previous
    /// k ([`crate::kmeans::hysteresis_k`]): borderline flips of k are suppressed.
    Hysteresis,
    /// k = min(`fixed_k`, distinct reward vectors), no elbow.
    Fixed,
}

/// The advantage keys of the `[algorithm]` table (the rest are [`crate::loss::LossConfig`]'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// `advantage` in the `[algorithm]` table.
    #[serde(rename = "advantage")]
    pub estimator: Estimator,
    /// Sort each question's reward vector before clustering, so clusters do not depend on
    /// sampling order (the released code kept rollout order).
    pub sort_group_rewards: bool,
    /// Keep at most this many questions per domain in the history (None: all, as released).
    pub history_window: Option<usize>,
    pub k_max: usize,
    pub elbow_tol: f64,
    /// k-means++ starts per k; the lowest-inertia clustering is kept (sklearn's n_init).
    pub kmeans_restarts: usize,
    /// How k is chosen: the elbow (default), the elbow with hysteresis, or fixed.
    pub k_selection: KSelection,
    /// k with `k_selection = "fixed"` (capped by the distinct vectors).
    pub fixed_k: usize,
    pub domain_mean: DomainMean,
    /// false = the paper's "DomainOnly" ablation (T_c = 1).
    pub clusters: bool,
    /// KL-aware damping of the paper's full DRPO (off in the released code).
    pub kl_damping: bool,
    /// The percentile of |s'| x KL that sets the damping threshold t_p.
    pub kl_damping_quantile: f64,
    /// Added to every standard deviation and floors every temperature.
    pub eps: f64,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self {
            estimator: Estimator::Drpo,
            sort_group_rewards: true,
            history_window: None,
            k_max: 10,
            elbow_tol: 0.10,
            kmeans_restarts: crate::kmeans::DEFAULT_RESTARTS,
            k_selection: KSelection::Elbow,
            fixed_k: 3,
            domain_mean: DomainMean::InverseClusterSize,
            clusters: true,
            kl_damping: false,
            kl_damping_quantile: 0.75,
            eps: 1e-6,
        }
    }
}

impl Estimator {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Grpo => "grpo",
            Estimator::DrGrpo => "dr_grpo",
            Estimator::Drpo => "drpo",
        }
    }

    /// The fewest responses per prompt that give a learning signal: every estimator here
    /// scores a response against its group's mean (a group of one scores 0).
    pub fn min_samples_per_prompt(self) -> usize {
        match self {
            Estimator::Grpo | Estimator::DrGrpo | Estimator::Drpo => 2,
        }
    }
}

impl AdvantageConfig {
    /// Its keys in the `[algorithm]` table.
    pub const KEYS: [&'static str; 13] = [
        "advantage",
        "sort_group_rewards",
        "history_window",
        "k_max",
        "elbow_tol",
        "kmeans_restarts",
        "k_selection",
        "fixed_k",
        "domain_mean",
        "clusters",
        "kl_damping",
        "kl_damping_quantile",
        "eps",
    ];

    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.k_max < 1 {
            return Err("algorithm.k_max must be at least 1".into());
        }
        if !(self.elbow_tol > 0.0 && self.elbow_tol < 1.0) {
            return Err(format!("algorithm.elbow_tol must be in (0, 1), got {}", self.elbow_tol));
        }
        if self.kmeans_restarts < 1 {
            return Err("algorithm.kmeans_restarts must be at least 1".into());
        }
        if self.fixed_k < 1 {
            return Err("algorithm.fixed_k must be at least 1".into());
        }
        if self.history_window == Some(0) {
            return Err("algorithm.history_window must be at least 1 (omit it to keep the whole history)".into());
        }
        if !(self.kl_damping_quantile > 0.0 && self.kl_damping_quantile < 1.0) {
            return Err(format!("algorithm.kl_damping_quantile must be in (0, 1), got {}", self.kl_damping_quantile));
        }
        if !(self.eps > 0.0 && self.eps < 1e-2) {
            return Err(format!("algorithm.eps must be in (0, 0.01), got {}", self.eps));
        }
        Ok(())
    }
}

/// One question (prompt) with the rewards of its G responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub domain: String,
    pub rewards: Vec<f64>,
}

/// The DRPO figures of one domain at one step (logged per domain).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainStats {
    /// Mean reward of this step's responses in the domain.
    pub reward_mean: f64,
    /// N_d: questions of the domain seen so far (this step included).
    pub questions: u64,
    /// mu_d over the (windowed) history.
    pub mu: f64,
    /// T_d.
    pub temperature: f64,
    /// k: the clusters used (after `k_selection`).
    pub clusters: usize,
    /// The elbow rule's own k this step (None where it was not run: `k_selection =
    /// "fixed"`, or `clusters = false`).
    pub elbow_clusters: Option<usize>,
    /// Inertia of the clustering used: sum over the history of squared distances to the
    /// centroids.
    pub inertia: f64,
    /// N_c and mu_c of each cluster, numbered by ascending mu_c (the rows' `cluster`).
    pub cluster_sizes: Vec<u64>,
    pub cluster_means: Vec<f64>,
    /// Mean of m / (T_d T_c) over this step's responses: how much the domain was scaled.
    pub scale_mean: f64,
}

/// How one group's advantages were formed: what its rollout rows carry, so that
/// `advantage = damping * score / (domain_temperature * cluster_temperature) / batch_norm`
/// ([`AdvantageOutput::batch_norm`]); where `score / (T_d T_c)` is not finite, `score`
/// replaces it (docs/drpo.md step 8).
///
/// With GRPO and Dr.GRPO the temperatures and damping are 1 and the domain is one cluster
/// of this batch's questions: `cluster` 0, `cluster_size` = `domain_questions` = the
/// domain's questions in this batch, `cluster_mean` = `domain_mean` = their mean reward.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupTelemetry {
    /// The question's cluster in its domain, numbered by ascending cluster mean (0 = the
    /// hardest).
    pub cluster: usize,
    /// N_c: the cluster's questions in the (windowed) history.
    pub cluster_size: u64,
    /// mu_c: the cluster's mean reward.
    pub cluster_mean: f64,
    /// N_d: the domain's questions ever seen, this step included.
    pub domain_questions: u64,
    /// mu_d.
    pub domain_mean: f64,
    /// T_d = max(sqrt(N_d) mu_d, eps).
    pub domain_temperature: f64,
    /// T_c = max(sqrt(N_c) mu_c, eps); 1 with `clusters = false`.
    pub cluster_temperature: f64,
    /// k of the domain's clustering this step.
    pub domain_clusters: usize,
    /// s, the group-relative score of step 2, per response.
    #[serde(skip)]
    pub scores: Vec<f64>,
    /// m, the KL damping of step 11, per response (1 when off).
    #[serde(skip)]
    pub damping: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct AdvantageOutput {
    /// Per group, per response.
    pub advantages: Vec<Vec<f64>>,
    /// Per domain of this batch (DRPO only).
    pub domains: BTreeMap<String, DomainStats>,
    /// Groups whose rewards were all equal (their GRPO score is 0).
    pub zero_std_groups: usize,
    /// Per group: how its advantages were formed.
    pub telemetry: Vec<GroupTelemetry>,
    /// Step 10's divisor: std over the global batch of the scaled scores, plus eps (DRPO);
    /// 1 for GRPO and Dr.GRPO.
    pub batch_norm: f64,
}

/// One rollout row's telemetry: its group's, and its response's score and damping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseTelemetry {
    #[serde(flatten)]
    pub group: GroupTelemetry,
    /// s.
    pub score: f64,
    /// m.
    pub kl_damping: f64,
    /// [`AdvantageOutput::batch_norm`].
    pub batch_norm: f64,
    pub estimator: Estimator,
    /// The eps of step 2's std (and of the temperatures and batch_norm).
    pub eps: f64,
}

impl AdvantageOutput {
    /// The telemetry of response `i` of group `group` (`estimator` and `eps`: the config's).
    pub fn response(&self, group: usize, i: usize, config: &AdvantageConfig) -> ResponseTelemetry {
        let g = &self.telemetry[group];
        ResponseTelemetry {
            group: g.clone(),
            score: g.scores[i],
            kl_damping: g.damping[i],
            batch_norm: self.batch_norm,
            estimator: config.estimator,
            eps: config.eps,
        }
    }
}

/// DRPO's per-domain history of reward vectors; part of a checkpoint, so a resumed run
/// clusters exactly as an uninterrupted one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrpoHistory {
    pub domains: BTreeMap<String, DomainHistory>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainHistory {
    /// N_d: every question ever seen, windowed or not.
    pub seen: u64,
    pub vectors: VecDeque<Vec<f64>>,
    /// Clustering runs so far (seeds each one).
    pub runs: u64,
    /// k of the last clustering (0: none yet); where `k_selection = "hysteresis"` starts.
    #[serde(default)]
    pub k: usize,
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Unbiased (n - 1) standard deviation; 0 for fewer than two values.
fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// torch.quantile's linear interpolation.
fn quantile(x: &[f64], q: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Step 6 for one domain: the clustering of its history under `config` (k-means with
/// `kmeans_restarts`, k by `k_selection`; one cluster with `clusters = false`), given the
/// domain's previous k (0: none). Also returns the elbow's own k where it was computed.
pub fn choose_clustering(
    data: &WeightedPoints,
    config: &AdvantageConfig,
    previous_k: usize,
    seed: u64,
) -> (Clustering, Option<usize>) {
    let restarts = config.kmeans_restarts;
    if !config.clusters {
        // DomainOnly needs no clusters: one k-means with k = 1 is the domain mean.
        return (kmeans(data, 1, seed, restarts), None);
    }
    match config.k_selection {
        KSelection::Fixed => (kmeans(data, config.fixed_k.min(data.len()), seed, restarts), None),
        KSelection::Elbow => {
            let c = elbow(data, config.k_max, config.elbow_tol, seed, restarts);
            let k = c.centroids.len();
            (c, Some(k))
        }
        KSelection::Hysteresis => {
            let cap = elbow_cap(data, config.k_max);
            if cap <= 2 {
                return (kmeans(data, cap, seed, restarts), Some(cap));
            }
            let mut runs = clusterings(data, config.k_max, seed, restarts);
            let inertia: Vec<f64> = runs.iter().map(|c| c.inertia).collect();
            let k = hysteresis_k(&inertia, config.elbow_tol, previous_k);
            (runs.swap_remove(k - 1), Some(elbow_k(&inertia, config.elbow_tol)))
        }
    }
}

impl DrpoHistory {
    /// Advantages of `groups` (the whole global batch). `kl` (per group, per response: the
    /// summed k3 KL to the reference) is needed only with `kl_damping`. DRPO appends this
    /// batch's vectors to the history.
    pub fn advantages(
        &mut self,
        config: &AdvantageConfig,
        groups: &[Group],
        kl: Option<&[Vec<f64>]>,
    ) -> AdvantageOutput {
        let eps = config.eps;
        // Step 2: group-relative scores s_{q,i}.
        let mut zero_std_groups = 0;
        let scores: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| {
                let (m, sd) = (mean(&g.rewards), std_unbiased(&g.rewards));
                if sd == 0.0 {
                    zero_std_groups += 1;
                }
                match config.estimator {
                    Estimator::DrGrpo => g.rewards.iter().map(|r| r - m).collect(),
                    Estimator::Grpo | Estimator::Drpo => g.rewards.iter().map(|r| (r - m) / (sd + eps)).collect(),
                }
            })
            .collect();
        match config.estimator {
            Estimator::Grpo | Estimator::DrGrpo => {
                // Telemetry: each domain of the batch is one cluster; temperatures are 1.
                let mut per_domain: BTreeMap<&str, (u64, f64, f64)> = BTreeMap::new();
                for g in groups {
                    let e = per_domain.entry(g.domain.as_str()).or_default();
                    e.0 += 1;
                    e.1 += g.rewards.iter().sum::<f64>();
                    e.2 += g.rewards.len() as f64;
                }
                let telemetry = groups
                    .iter()
                    .zip(&scores)
                    .map(|(g, s)| {
                        let (questions, sum, n) = per_domain[g.domain.as_str()];
                        let mu = sum / n.max(1.0);
                        GroupTelemetry {
                            cluster: 0,
                            cluster_size: questions,
                            cluster_mean: mu,
                            domain_questions: questions,
                            domain_mean: mu,
                            domain_temperature: 1.0,
                            cluster_temperature: 1.0,
                            domain_clusters: 1,
                            scores: s.clone(),
                            damping: vec![1.0; s.len()],
                        }
                    })
                    .collect();
                return AdvantageOutput {
                    advantages: scores,
                    domains: BTreeMap::new(),
                    zero_std_groups,
                    telemetry,
                    batch_norm: 1.0,
                };
            }
            Estimator::Drpo => {}
        }

        // Steps 3-5: append each question's vector to its domain's history.
        let mut position_in_history = Vec::with_capacity(groups.len());
        for g in groups {
            let h = self.domains.entry(g.domain.clone()).or_default();
            let mut v = g.rewards.clone();
            if config.sort_group_rewards {
                v.sort_by(f64::total_cmp);
            }
            h.vectors.push_back(v);
            h.seen += 1;
            if let Some(w) = config.history_window {
                while h.vectors.len() > w {
                    h.vectors.pop_front();
                }
            }
        }
        // Questions of this batch are the last entries of their domain's history.
        let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
        for g in groups {
            *remaining.entry(g.domain.as_str()).or_default() += 1;
        }
        let mut taken: BTreeMap<&str, usize> = BTreeMap::new();
        for g in groups {
            let h = &self.domains[&g.domain];
            let t = taken.entry(g.domain.as_str()).or_default();
            // With a window smaller than this step's count, the oldest of this step's
            // questions have already left: they share the window's first entry.
            let start = h.vectors.len() as i64 - remaining[g.domain.as_str()] as i64;
            position_in_history.push((start + *t as i64).max(0) as usize);
            *t += 1;
        }

        // Steps 6-8: per domain, cluster the history and form the temperatures.
        struct DomainScale {
            t_d: f64,
            /// Per history entry: its cluster, numbered by ascending mu_c.
            cluster_of: Vec<usize>,
            /// Per cluster: T_c.
            t_c: Vec<f64>,
            stats: DomainStats,
        }
        // Domains are independent: cluster them in parallel (the result does not depend on
        // the thread count; each domain's seed comes from its own counters).
        for domain in remaining.keys() {
            self.domains.get_mut(*domain).expect("inserted above").runs += 1;
        }
        let history = &self.domains;
        let scales: BTreeMap<String, DomainScale> = remaining
            .keys()
            .copied()
            .collect::<Vec<&str>>()
            .par_iter()
            .map(|domain| {
                let h = &history[*domain];
                let vectors: Vec<Vec<f64>> = h.vectors.iter().cloned().collect();
                let data = WeightedPoints::from_points(&vectors);
                let seed = (h.runs << 20) ^ h.seen;
                let (clustering, elbow_clusters) = choose_clustering(&data, config, h.k, seed);
                let k = clustering.centroids.len();
                let mut size = vec![0.0; k];
                for (i, &c) in clustering.assignment.iter().enumerate() {
                    size[c] += data.weights[i];
                }
                let mu_c: Vec<f64> = clustering.centroids.iter().map(|c| mean(c)).collect();
                let mu_d = match config.domain_mean {
                    DomainMean::InverseClusterSize => {
                        let (num, den) = (0..k)
                            .filter(|&c| size[c] > 0.0)
                            .fold((0.0, 0.0), |(n, d), c| (n + mu_c[c] / size[c], d + 1.0 / size[c]));
                        if den > 0.0 {
                            num / den
                        } else {
                            0.0
                        }
                    }
                    DomainMean::Plain => mean(&vectors.iter().map(|v| mean(v)).collect::<Vec<_>>()),
                };
                let t_d = ((h.seen as f64).sqrt() * mu_d).max(eps);
                // Number the clusters by ascending mean (ties: k-means order).
                let mut order: Vec<usize> = (0..k).collect();
                order.sort_by(|&a, &b| mu_c[a].total_cmp(&mu_c[b]).then(a.cmp(&b)));
                let mut label = vec![0; k];
                for (new, &old) in order.iter().enumerate() {
                    label[old] = new;
                }
                let t_c = order
                    .iter()
                    .map(|&c| if config.clusters { (size[c].sqrt() * mu_c[c]).max(eps) } else { 1.0 })
                    .collect();
                let cluster_of = data.index_of_input.iter().map(|&d| label[clustering.assignment[d]]).collect();
                let stats = DomainStats {
                    questions: h.seen,
                    mu: mu_d,
                    temperature: t_d,
                    clusters: k,
                    elbow_clusters,
                    inertia: clustering.inertia,
                    cluster_sizes: order.iter().map(|&c| size[c] as u64).collect(),
                    cluster_means: order.iter().map(|&c| mu_c[c]).collect(),
                    ..Default::default()
                };
                (domain.to_string(), DomainScale { t_d, cluster_of, t_c, stats })
            })
            .collect();
        for (domain, s) in &scales {
            self.domains.get_mut(domain).expect("inserted above").k = s.stats.clusters;
        }

        // Step 9 (and 11): s' = m * s / (T_d T_c); a non-finite result keeps s.
        let factors: Vec<f64> = groups
            .iter()
            .zip(&position_in_history)
            .map(|(g, &pos)| {
                let s = &scales[&g.domain];
                1.0 / (s.t_d * s.t_c[s.cluster_of[pos]])
            })
            .collect();
        let mut scaled: Vec<Vec<f64>> = scores
            .iter()
            .zip(&factors)
            .map(|(row, f)| row.iter().map(|s| if (s * f).is_finite() { s * f } else { *s }).collect())
            .collect();
        let mut damping: Vec<Vec<f64>> = scores.iter().map(|r| vec![1.0; r.len()]).collect();
        if config.kl_damping {
            if let Some(kl) = kl {
                let z: Vec<Vec<f64>> =
                    scaled.iter().zip(kl).map(|(s, k)| s.iter().zip(k).map(|(s, k)| s.abs() * k).collect()).collect();
                let flat: Vec<f64> = z.iter().flatten().copied().collect();
                let t = if flat.iter().all(|&v| v == 0.0) {
                    eps
                } else {
                    quantile(&flat, config.kl_damping_quantile).max(eps)
                };
                for ((row, zr), dr) in scaled.iter_mut().zip(&z).zip(damping.iter_mut()) {
                    for ((s, z), d) in row.iter_mut().zip(zr).zip(dr.iter_mut()) {
                        *d = t / (t + z);
                        *s *= *d;
                    }
                }
            }
        }

        // Step 10: divide by the std over the whole batch (no re-centring).
        let flat: Vec<f64> = scaled.iter().flatten().copied().collect();
        let batch_norm = std_unbiased(&flat) + eps;
        let advantages: Vec<Vec<f64>> = scaled.iter().map(|r| r.iter().map(|s| s / batch_norm).collect()).collect();

        // Per group: how its advantages were formed.
        let telemetry = groups
            .iter()
            .zip(&position_in_history)
            .zip(scores.into_iter().zip(damping.iter().cloned()))
            .map(|((g, &pos), (scores, damping))| {
                let s = &scales[&g.domain];
                let c = s.cluster_of[pos];
                GroupTelemetry {
                    cluster: c,
                    cluster_size: s.stats.cluster_sizes[c],
                    cluster_mean: s.stats.cluster_means[c],
                    domain_questions: s.stats.questions,
                    domain_mean: s.stats.mu,
                    domain_temperature: s.t_d,
                    cluster_temperature: s.t_c[c],
                    domain_clusters: s.stats.clusters,
                    scores,
                    damping,
                }
            })
            .collect();

        // Per-domain figures of this batch.
        let mut sums: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
        for ((g, f), d) in groups.iter().zip(&factors).zip(&damping) {
            let e = sums.entry(g.domain.as_str()).or_default();
            e.0 += g.rewards.iter().sum::<f64>();
            e.1 += d.iter().map(|m| m * f).sum::<f64>();
            e.2 += g.rewards.len() as f64;
        }
        let domains = scales
            .into_iter()
            .map(|(name, s)| {
                let (reward, scale, n) = sums[name.as_str()];
                let stats = DomainStats { reward_mean: reward / n.max(1.0), scale_mean: scale / n.max(1.0), ..s.stats };
                (name, stats)
            })
            .collect();
        AdvantageOutput { advantages, domains, zero_std_groups, telemetry, batch_norm }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(domain: &str, rewards: &[f64]) -> Group {
        Group { domain: domain.into(), rewards: rewards.to_vec() }
    }

    #[test]
    fn grpo_is_the_standardised_group_score() {
        let config = AdvantageConfig { estimator: Estimator::Grpo, ..Default::default() };
        let out = DrpoHistory::default().advantages(
            &config,
            &[group("a", &[1.0, 0.0, 0.5]), group("a", &[0.3, 0.3, 0.3])],
            None,
        );
        // mean 0.5, unbiased std 0.5.
        let expected = [0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6), 0.0];
        for (a, e) in out.advantages[0].iter().zip(expected) {
            assert!((a - e).abs() < 1e-12);
        }
        assert_eq!(out.advantages[1], vec![0.0; 3]);
        assert_eq!(out.zero_std_groups, 1);
        let dr = AdvantageConfig { estimator: Estimator::DrGrpo, ..Default::default() };
        let out = DrpoHistory::default().advantages(&dr, &[group("a", &[1.0, 0.0, 0.5])], None);
        assert_eq!(out.advantages[0], vec![0.5, -0.5, 0.0]);
    }

    #[test]
    fn drpo_hand_computed_single_cluster() {
        // One domain, two identical questions -> one distinct vector -> k = 1.
        let config = AdvantageConfig::default();
        let mut h = DrpoHistory::default();
        let out = h.advantages(&config, &[group("d", &[1.0, 0.0]), group("d", &[0.0, 1.0])], None);
        // Sorted vectors are both [0, 1]: k = 1, N_c = 2, mu_c = 0.5, mu_d = 0.5, N_d = 2.
        let t = (2f64.sqrt() * 0.5) * (2f64.sqrt() * 0.5);
        let s = 0.5 / (0.5f64.sqrt() + 1e-6);
        let scaled = [s / t, -s / t, -s / t, s / t];
        let sd = (4.0 * (s / t) * (s / t) / 3.0).sqrt();
        let flat: Vec<f64> = out.advantages.iter().flatten().copied().collect();
        for (a, e) in flat.iter().zip(scaled.iter().map(|v| v / (sd + 1e-6))) {
            assert!((a - e).abs() < 1e-9, "{a} vs {e}");
        }
        let d = &out.domains["d"];
        assert_eq!((d.questions, d.clusters), (2, 1));
        assert!((d.temperature - 2f64.sqrt() * 0.5).abs() < 1e-12);
        assert!((d.scale_mean - 1.0 / t).abs() < 1e-9);
        assert_eq!(h.domains["d"].vectors.len(), 2);
    }

    #[test]
    fn zero_reward_cluster_keeps_the_unscaled_score_and_stays_finite() {
        let config = AdvantageConfig::default();
        let mut h = DrpoHistory::default();
        let out = h.advantages(&config, &[group("d", &[0.0, 0.0, 0.0]), group("e", &[0.0, 1.0, 0.0])], None);
        assert!(out.advantages.iter().flatten().all(|a| a.is_finite()));
    }

    #[test]
    fn history_window_bounds_the_vectors_but_not_n_d() {
        let config = AdvantageConfig { history_window: Some(3), ..Default::default() };
        let mut h = DrpoHistory::default();
        for step in 0..4 {
            let groups: Vec<Group> = (0..2).map(|i| group("d", &[0.1 * (step + i) as f64, 0.5, 0.9])).collect();
            let out = h.advantages(&config, &groups, None);
            assert_eq!(out.domains["d"].questions, 2 * (step + 1) as u64);
        }
        assert_eq!(h.domains["d"].vectors.len(), 3);
    }

    #[test]
    fn domain_only_sets_cluster_temperature_to_one_and_damping_shrinks_large_kl() {
        let groups = vec![
            group("a", &[0.9, 0.1, 0.5, 0.4]),
            group("a", &[0.2, 0.8, 0.6, 0.6]),
            group("b", &[1.0, 0.0, 1.0, 0.0]),
        ];
        let only = AdvantageConfig { clusters: false, ..Default::default() };
        let out = DrpoHistory::default().advantages(&only, &groups, None);
        assert_eq!(out.domains["a"].clusters, 1);
        assert!((out.domains["a"].scale_mean - 1.0 / out.domains["a"].temperature).abs() < 1e-12);

        let damp = AdvantageConfig { kl_damping: true, ..Default::default() };
        let plain = DrpoHistory::default().advantages(&AdvantageConfig::default(), &groups, None);
        let kl = vec![vec![0.0; 4], vec![0.0; 4], vec![0.0, 0.0, 50.0, 0.0]];
        let damped = DrpoHistory::default().advantages(&damp, &groups, Some(&kl));
        // The high-KL response loses weight relative to the others.
        let rel = |o: &AdvantageOutput| o.advantages[2][2].abs() / o.advantages[2][0].abs();
        assert!(rel(&damped) < 0.5 * rel(&plain), "{} vs {}", rel(&damped), rel(&plain));
    }

    #[test]
    fn config_reads_its_toml_keys() {
        let c: AdvantageConfig = toml::from_str("advantage = \"grpo\"\neps = 1e-4\nhistory_window = 8").unwrap();
        assert_eq!(
            c,
            AdvantageConfig { estimator: Estimator::Grpo, eps: 1e-4, history_window: Some(8), ..Default::default() }
        );
        assert!(toml::from_str::<AdvantageConfig>("estimator = \"grpo\"").is_err(), "the TOML key is advantage");
        // KEYS are exactly the serialised keys (history_window set, so it is written).
        let full = AdvantageConfig { history_window: Some(1), ..Default::default() };
        let mut keys: Vec<String> = toml::Table::try_from(full).unwrap().keys().cloned().collect();
        keys.sort();
        let mut expected: Vec<String> = AdvantageConfig::KEYS.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn k_selection_keys_validate_and_old_histories_load() {
        let c: AdvantageConfig =
            toml::from_str("kmeans_restarts = 3\nk_selection = \"hysteresis\"\nfixed_k = 4").unwrap();
        assert_eq!((c.kmeans_restarts, c.k_selection, c.fixed_k), (3, KSelection::Hysteresis, 4));
        assert_eq!(AdvantageConfig::default().kmeans_restarts, 10);
        assert_eq!(AdvantageConfig::default().k_selection, KSelection::Elbow);
        for bad in [
            AdvantageConfig { kmeans_restarts: 0, ..Default::default() },
            AdvantageConfig { fixed_k: 0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err());
        }
        assert!(toml::from_str::<AdvantageConfig>("k_selection = \"gap\"").is_err());
        // A checkpoint written before `k` existed still loads (k = 0: none yet).
        let old: DomainHistory = serde_json::from_str(r#"{"seen": 2, "vectors": [[0.0, 1.0]], "runs": 1}"#).unwrap();
        assert_eq!(old.k, 0);
    }

    #[test]
    fn fixed_and_hysteresis_choose_k_and_the_history_remembers_it() {
        let mut r = qoq_data::rng::stream(9, &[2]);
        let batch = |r: &mut rand_chacha::ChaCha8Rng| -> Vec<Group> {
            (0..12)
                .map(|q| {
                    let rewards: Vec<f64> = (0..4).map(|_| (qoq_data::rng::unit(r) * 6.0).floor() / 5.0).collect();
                    group(["a", "b"][q % 2], &rewards)
                })
                .collect()
        };
        let fixed = AdvantageConfig { k_selection: KSelection::Fixed, fixed_k: 2, ..Default::default() };
        let hyst = AdvantageConfig { k_selection: KSelection::Hysteresis, ..Default::default() };
        let (mut hf, mut hh) = (DrpoHistory::default(), DrpoHistory::default());
        for _ in 0..5 {
            let groups = batch(&mut r);
            let out = hf.advantages(&fixed, &groups, None);
            assert_eq!(out.domains["a"].clusters, 2);
            assert_eq!(out.domains["a"].elbow_clusters, None);
            assert_eq!(hf.domains["a"].k, 2);
            let out = hh.advantages(&hyst, &groups, None);
            for (d, s) in &out.domains {
                assert_eq!(hh.domains[d].k, s.clusters);
                assert!(s.elbow_clusters.is_some());
                assert_eq!(s.cluster_sizes.len(), s.clusters);
                assert_eq!(s.cluster_sizes.iter().sum::<u64>(), hh.domains[d].vectors.len() as u64);
            }
        }
        // fixed_k above the distinct vectors is capped.
        let out = DrpoHistory::default().advantages(
            &AdvantageConfig { k_selection: KSelection::Fixed, fixed_k: 9, ..Default::default() },
            &[group("a", &[0.0, 1.0]), group("a", &[1.0, 1.0])],
            None,
        );
        assert_eq!(out.domains["a"].clusters, 2);
    }

    #[test]
    fn quantile_interpolates_like_torch() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.75), 3.25);
        assert_eq!(quantile(&[5.0], 0.75), 5.0);
    }
}
