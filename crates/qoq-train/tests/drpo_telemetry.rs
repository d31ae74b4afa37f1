//! The DRPO telemetry of the rollout rows (issue 16, item 2): every advantage follows from its
//! row's telemetry and the rewards of its group alone, and the telemetry agrees with the
//! history it claims to summarise.

use std::collections::BTreeMap;

use qoq_data::rng::{stream, unit};
use qoq_train::advantage::{AdvantageConfig, AdvantageOutput, DrpoHistory, Estimator, Group, KSelection};
use serde_json::{json, Value};

const DOMAINS: [&str; 4] = ["chest_xray", "mammography", "dermoscopy", "ecg"];

/// A step's groups: skewed domain sizes, rewards coarse in some domains (many repeated
/// vectors, some all-equal groups) and continuous in others.
fn batch(seed: u64, step: u64, prompts: usize, g: usize) -> Vec<Group> {
    let mut r = stream(seed, &[step]);
    (0..prompts)
        .map(|q| {
            let domain = DOMAINS[[0, 0, 0, 0, 1, 1, 2, 3][q % 8]];
            let difficulty = unit(&mut r);
            let rewards = (0..g)
                .map(|_| {
                    let x = if unit(&mut r) > difficulty { 0.5 } else { 0.0 } + 0.5 * unit(&mut r);
                    if domain == "mammography" || domain == "ecg" {
                        (x * 4.0).floor() / 4.0
                    } else {
                        x
                    }
                })
                .collect();
            Group { domain: domain.into(), rewards }
        })
        .collect()
}

/// The rollout rows of one step as `write_rollouts` writes them (the reward and telemetry
/// keys; prompt ids are the group's place in the batch).
fn rows(step: u64, groups: &[Group], out: &AdvantageOutput, config: &AdvantageConfig) -> Vec<Value> {
    let mut rows = Vec::new();
    for (q, g) in groups.iter().enumerate() {
        for (i, r) in g.rewards.iter().enumerate() {
            let mut row = json!({
                "step": step,
                "prompt_id": format!("p{step}_{q}"),
                "domain": g.domain,
                "reward": r,
                "advantage": out.advantages[q][i],
            });
            let Value::Object(t) = json!(out.response(q, i, config)) else { panic!("an object") };
            row.as_object_mut().unwrap().extend(t);
            rows.push(row);
        }
    }
    rows
}

fn f(row: &Value, key: &str) -> f64 {
    row[key].as_f64().unwrap_or_else(|| panic!("row lacks {key}: {row}"))
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Replays every advantage of one step from the rows alone: the group score from the rewards
/// of the rows sharing a prompt id, then the row's scaling. Returns the largest error, the
/// relative error of `batch_norm` against the step's std of the scaled scores (DRPO; 1
/// otherwise) included; checks `score`. `tamper` alters the rows first (to show the replay
/// notices wrong telemetry).
fn replay(rows: &[Value], tamper: &dyn Fn(&mut Value)) -> f64 {
    let mut rows = rows.to_vec();
    rows.iter_mut().for_each(tamper);
    let mut by_prompt: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &rows {
        by_prompt.entry(r["prompt_id"].as_str().unwrap()).or_default().push(f(r, "reward"));
    }
    let mut worst: f64 = 0.0;
    let mut scaled = Vec::new();
    for r in &rows {
        let rewards = &by_prompt[r["prompt_id"].as_str().unwrap()];
        let eps = f(r, "eps");
        let (m, sd) = (mean(rewards), std_unbiased(rewards));
        let s = match r["estimator"].as_str().unwrap() {
            "dr_grpo" => f(r, "reward") - m,
            "grpo" | "drpo" => (f(r, "reward") - m) / (sd + eps),
            other => panic!("estimator {other}"),
        };
        assert!((s - f(r, "score")).abs() < 1e-9, "score {s} vs row {r}");
        let t = s / (f(r, "domain_temperature") * f(r, "cluster_temperature"));
        let t = f(r, "kl_damping") * if t.is_finite() { t } else { s };
        scaled.push(t);
        worst = worst.max((t / f(r, "batch_norm") - f(r, "advantage")).abs());
    }
    let norm = if rows[0]["estimator"] == "drpo" { std_unbiased(&scaled) + f(&rows[0], "eps") } else { 1.0 };
    rows.iter().map(|r| (f(r, "batch_norm") - norm).abs() / norm).fold(worst, f64::max)
}

/// The configurations replayed: DRPO (elbow, hysteresis, fixed k, DomainOnly, windowed with
/// KL damping, plain mu_d), GRPO and Dr.GRPO.
fn configs() -> Vec<(&'static str, AdvantageConfig)> {
    let d = AdvantageConfig::default();
    vec![
        ("drpo", d.clone()),
        ("drpo restarts 3", AdvantageConfig { kmeans_restarts: 3, ..d.clone() }),
        ("drpo hysteresis", AdvantageConfig { k_selection: KSelection::Hysteresis, ..d.clone() }),
        ("drpo fixed 3", AdvantageConfig { k_selection: KSelection::Fixed, fixed_k: 3, ..d.clone() }),
        ("drpo clusters=false", AdvantageConfig { clusters: false, ..d.clone() }),
        (
            "drpo window kl plain",
            AdvantageConfig {
                history_window: Some(20),
                kl_damping: true,
                domain_mean: qoq_train::advantage::DomainMean::Plain,
                ..d.clone()
            },
        ),
        ("grpo", AdvantageConfig { estimator: Estimator::Grpo, ..d.clone() }),
        ("dr_grpo", AdvantageConfig { estimator: Estimator::DrGrpo, ..d }),
    ]
}

#[test]
fn every_advantage_follows_from_its_row_telemetry() {
    for (name, config) in configs() {
        for seed in 0..3 {
            let mut history = DrpoHistory::default();
            let mut kl_stream = stream(seed, &[99]);
            for step in 1..=12 {
                let groups = batch(seed, step, 24, 5);
                let kl: Vec<Vec<f64>> =
                    groups.iter().map(|g| g.rewards.iter().map(|_| 3.0 * unit(&mut kl_stream)).collect()).collect();
                let out = history.advantages(&config, &groups, Some(&kl));
                let rows = rows(step, &groups, &out, &config);
                let err = replay(&rows, &|_| {});
                assert!(err < 1e-6, "{name} seed {seed} step {step}: replay off by {err}");
                // The temperatures are 1 where there is nothing to scale by.
                for r in &rows {
                    if config.estimator != Estimator::Drpo {
                        assert_eq!((f(r, "domain_temperature"), f(r, "cluster_temperature")), (1.0, 1.0));
                        assert_eq!((r["cluster"].as_u64(), r["domain_clusters"].as_u64()), (Some(0), Some(1)));
                    } else if !config.clusters {
                        assert_eq!(f(r, "cluster_temperature"), 1.0);
                        assert_eq!(r["domain_clusters"].as_u64(), Some(1));
                    }
                    if !config.kl_damping {
                        assert_eq!(f(r, "kl_damping"), 1.0);
                    }
                }
            }
        }
    }
}

#[test]
fn the_replay_notices_wrong_telemetry() {
    let config = AdvantageConfig::default();
    let mut history = DrpoHistory::default();
    for step in 1..=6 {
        let groups = batch(4, step, 24, 5);
        let out = history.advantages(&config, &groups, None);
        let rows = rows(step, &groups, &out, &config);
        assert!(replay(&rows, &|_| {}) < 1e-6);
        if step < 3 {
            continue;
        }
        // Several clusters by now: dropping the cluster temperature, or swapping in another
        // cluster's, breaks the replay.
        assert!(rows.iter().any(|r| r["domain_clusters"].as_u64().unwrap() > 1));
        assert!(replay(&rows, &|r| r["cluster_temperature"] = json!(1.0)) > 1e-3);
        assert!(replay(&rows, &|r| r["domain_temperature"] = json!(f(r, "domain_temperature") * 1.01)) > 1e-6);
    }
}

#[test]
fn telemetry_agrees_with_the_history_it_summarises() {
    for (name, config) in configs().into_iter().filter(|(_, c)| c.estimator == Estimator::Drpo) {
        let eps = config.eps;
        let mut history = DrpoHistory::default();
        // Our own copy of each domain's history (sorted vectors, windowed) and N_d.
        let mut mine: BTreeMap<String, (u64, Vec<Vec<f64>>)> = BTreeMap::new();
        for step in 1..=10 {
            let groups = batch(11, step, 24, 5);
            for g in &groups {
                let e = mine.entry(g.domain.clone()).or_default();
                let mut v = g.rewards.clone();
                v.sort_by(f64::total_cmp);
                e.0 += 1;
                e.1.push(v);
                if let Some(w) = config.history_window {
                    let drop = e.1.len().saturating_sub(w);
                    e.1.drain(..drop);
                }
            }
            let out = history.advantages(&config, &groups, None);
            for (d, s) in &out.domains {
                let (seen, vectors) = &mine[d];
                assert_eq!(s.questions, *seen, "{name}: N_d of {d}");
                // The clusters partition the (windowed) history...
                assert_eq!(s.cluster_sizes.len(), s.clusters);
                assert_eq!(s.cluster_sizes.iter().sum::<u64>(), vectors.len() as u64, "{name} step {step}: N_c of {d}");
                // ...their means carry the history's total reward...
                let total: f64 = vectors.iter().map(|v| mean(v)).sum();
                let carried: f64 = s.cluster_sizes.iter().zip(&s.cluster_means).map(|(n, m)| *n as f64 * m).sum();
                assert!((total - carried).abs() < 1e-9 * (1.0 + total), "{name} step {step} {d}: {total} vs {carried}");
                // ...numbered by ascending mean, and mu_d, T_d follow from them.
                assert!(s.cluster_means.windows(2).all(|w| w[0] <= w[1]));
                let mu_d = match config.domain_mean {
                    qoq_train::advantage::DomainMean::InverseClusterSize => {
                        let live = || s.cluster_sizes.iter().zip(&s.cluster_means).filter(|(n, _)| **n > 0);
                        live().map(|(n, m)| m / *n as f64).sum::<f64>()
                            / live().map(|(n, _)| 1.0 / *n as f64).sum::<f64>()
                    }
                    qoq_train::advantage::DomainMean::Plain => total / vectors.len() as f64,
                };
                assert!((s.mu - mu_d).abs() < 1e-12, "{name}: mu_d of {d}");
                assert!((s.temperature - ((*seen as f64).sqrt() * mu_d).max(eps)).abs() < 1e-12);
                assert!(s.inertia >= 0.0 && s.inertia.is_finite());
            }
            for (g, t) in groups.iter().zip(&out.telemetry) {
                let s = &out.domains[&g.domain];
                assert!(t.cluster < s.clusters);
                assert_eq!(t.cluster_size, s.cluster_sizes[t.cluster]);
                assert_eq!(t.cluster_mean, s.cluster_means[t.cluster]);
                assert_eq!(
                    (t.domain_questions, t.domain_mean, t.domain_temperature),
                    (s.questions, s.mu, s.temperature)
                );
                assert_eq!(t.domain_clusters, s.clusters);
                let t_c =
                    if config.clusters { ((t.cluster_size as f64).sqrt() * t.cluster_mean).max(eps) } else { 1.0 };
                assert_eq!(t.cluster_temperature, t_c, "{name}: T_c");
                // Identical reward vectors fall in the same cluster.
                let mut v = g.rewards.clone();
                v.sort_by(f64::total_cmp);
                for (h, u) in groups.iter().zip(&out.telemetry) {
                    let mut w = h.rewards.clone();
                    w.sort_by(f64::total_cmp);
                    if h.domain == g.domain && w == v {
                        assert_eq!(u.cluster, t.cluster);
                    }
                }
            }
        }
    }
}
