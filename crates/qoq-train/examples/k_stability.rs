//! How often DRPO's cluster count k changes between consecutive clusterings of a domain,
//! replayed from a run's reward histories (issue 16, item 3).
//!
//!     cargo run --release -p qoq-train --example k_stability -- RUN_DIR [options]
//!
//! Reads `RUN_DIR/rollouts/step_*.jsonl` (every RL step must have been dumped:
//! `run.rollouts_every = 1`), groups each step's rewards by prompt id (a prompt's G rows are
//! consecutive), and feeds the steps in order to the trainer's own advantage code, so each
//! domain's history grows exactly as in the run and is re-clustered at every step it appears
//! in. The rewards are the run's, whatever the settings replayed (the policy is not re-run).
//!
//! Options (each may be given several times; the table covers every combination):
//!   --restarts N          k-means++ starts per k (default: 3 and 10)
//!   --k-selection RULE    elbow | hysteresis | fixed (default: elbow and hysteresis)
//!   --fixed-k N           k for `fixed` (default 3)
//!   --k-max N, --tol X, --window N, --unsorted, --domain-only: the other [algorithm] keys
//!   --show-k              also print each domain's k, clustering by clustering
//!
//! Prints, per setting and domain: the clusterings, how many changed k from the domain's
//! previous one (and the fraction), the range and mean of k; then, for each pair of settings
//! that differ only in restarts, on how many (step, domain) pairs their k differ; and, where
//! the rows carry `domain_clusters` (the trainer's telemetry), how many of those the replay
//! with the trainer's defaults reproduces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qoq_train::advantage::{AdvantageConfig, DrpoHistory, Group, KSelection};

/// One step of the run: its groups (domain, rewards) and, per domain, the k the rows report.
struct Step {
    step: u64,
    groups: Vec<Group>,
    dumped_k: BTreeMap<String, u64>,
}

fn read_steps(run: &Path) -> Vec<Step> {
    let dir = run.join("rollouts");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let n = name.strip_prefix("step_")?.strip_suffix(".jsonl")?.parse().ok()?;
            Some((n, path))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(step, path)| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let rows: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("a JSON row"))
                .collect();
            // Runs of consecutive rows with one prompt id; G = the shortest run (a prompt
            // drawn twice in a row gives a run of 2G).
            let mut runs: Vec<(String, String, Vec<f64>)> = Vec::new();
            let mut dumped_k = BTreeMap::new();
            for r in &rows {
                let id = r["prompt_id"].as_str().expect("prompt_id").to_string();
                let domain = r["domain"].as_str().expect("domain").to_string();
                let reward = r["reward"].as_f64().expect("reward");
                if let Some(k) = r.get("domain_clusters").and_then(|k| k.as_u64()) {
                    dumped_k.insert(domain.clone(), k);
                }
                match runs.last_mut() {
                    Some((last, _, rewards)) if *last == id => rewards.push(reward),
                    _ => runs.push((id, domain, vec![reward])),
                }
            }
            let g = runs.iter().map(|r| r.2.len()).min().unwrap_or(1);
            let groups = runs
                .into_iter()
                .flat_map(|(_, domain, rewards)| {
                    rewards.chunks(g).map(|c| Group { domain: domain.clone(), rewards: c.to_vec() }).collect::<Vec<_>>()
                })
                .collect();
            Step { step, groups, dumped_k }
        })
        .collect()
}

/// One clustering of a domain: its step, k, and whether the cap K = min(k_max, distinct
/// vectors) was k_max (the history no longer limits k).
type Clusterings = BTreeMap<String, Vec<(u64, usize, bool)>>;

/// The number of distinct vectors (exact equality), what caps k.
fn distinct<'a>(vectors: impl Iterator<Item = &'a Vec<f64>>) -> usize {
    let mut v: Vec<&Vec<f64>> = vectors.collect();
    let cmp = |a: &&Vec<f64>, b: &&Vec<f64>| {
        a.iter().zip(b.iter()).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(a.len().cmp(&b.len()))
    };
    v.sort_by(cmp);
    v.dedup_by(|a, b| cmp(&&**a, &&**b).is_eq());
    v.len()
}

/// Per domain: the k of each of its clusterings, by step.
fn replay(steps: &[Step], config: &AdvantageConfig) -> Clusterings {
    let mut history = DrpoHistory::default();
    let mut ks = Clusterings::new();
    for s in steps {
        let out = history.advantages(config, &s.groups, None);
        for (d, stats) in &out.domains {
            let capped = distinct(history.domains[d].vectors.iter()) >= config.k_max;
            ks.entry(d.clone()).or_default().push((s.step, stats.clusters, capped));
        }
    }
    ks
}

fn selection_name(k: KSelection, fixed_k: usize) -> String {
    match k {
        KSelection::Elbow => "elbow".into(),
        KSelection::Hysteresis => "hysteresis".into(),
        KSelection::Fixed => format!("fixed {fixed_k}"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut run: Option<PathBuf> = None;
    let mut restarts: Vec<usize> = Vec::new();
    let mut selections: Vec<KSelection> = Vec::new();
    let mut base = AdvantageConfig::default();
    let mut show_k = false;
    let usage = "usage: k_stability RUN_DIR [--restarts N].. [--k-selection elbow|hysteresis|fixed].. [--fixed-k N] \
                 [--k-max N] [--tol X] [--window N] [--unsorted] [--domain-only] [--show-k]";
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value\n{usage}"));
        match a.as_str() {
            "--restarts" => restarts.push(value("--restarts").parse().expect("--restarts N")),
            "--k-selection" => selections.push(match value("--k-selection").as_str() {
                "elbow" => KSelection::Elbow,
                "hysteresis" => KSelection::Hysteresis,
                "fixed" => KSelection::Fixed,
                other => panic!("--k-selection {other}: elbow, hysteresis or fixed"),
            }),
            "--fixed-k" => base.fixed_k = value("--fixed-k").parse().expect("--fixed-k N"),
            "--k-max" => base.k_max = value("--k-max").parse().expect("--k-max N"),
            "--tol" => base.elbow_tol = value("--tol").parse().expect("--tol X"),
            "--window" => base.history_window = Some(value("--window").parse().expect("--window N")),
            "--unsorted" => base.sort_group_rewards = false,
            "--domain-only" => base.clusters = false,
            "--show-k" => show_k = true,
            "-h" | "--help" => {
                println!("{usage}");
                return;
            }
            path if run.is_none() && !path.starts_with("--") => run = Some(path.into()),
            other => panic!("unknown argument {other}\n{usage}"),
        }
    }
    let run = run.unwrap_or_else(|| panic!("{usage}"));
    if restarts.is_empty() {
        restarts = vec![3, 10];
    }
    if selections.is_empty() {
        selections = vec![KSelection::Elbow, KSelection::Hysteresis];
    }
    base.validate().unwrap_or_else(|e| panic!("{e}"));
    let steps = read_steps(&run);
    assert!(!steps.is_empty(), "no rollouts/step_*.jsonl under {}", run.display());
    let gaps = steps.windows(2).filter(|w| w[1].step != w[0].step + 1).count();
    let questions: usize = steps.iter().map(|s| s.groups.len()).sum();
    println!(
        "{}: {} steps ({}..={}), {questions} questions{}",
        run.display(),
        steps.len(),
        steps[0].step,
        steps.last().unwrap().step,
        if gaps > 0 { format!(" (WARNING: {gaps} gaps: not every step was dumped)") } else { String::new() }
    );

    let mut results: Vec<(usize, KSelection, Clusterings)> = Vec::new();
    println!(
        "\n\"at K = k_max\": only the transitions between two clusterings whose history held at least k_max \
         distinct vectors (earlier, k also grows because the history does)."
    );
    println!(
        "\n| k_selection | restarts | domain | clusterings | k changes | fraction | at K = k_max: changes / transitions \
         | k min..max | k mean |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &sel in &selections {
        for &r in &restarts {
            let config = AdvantageConfig { kmeans_restarts: r, k_selection: sel, ..base.clone() };
            let t = std::time::Instant::now();
            let ks = replay(&steps, &config);
            let seconds = t.elapsed().as_secs_f64();
            let (mut all_changes, mut all_transitions, mut all_capped, mut all_capped_changes) = (0, 0, 0, 0);
            for (d, seq) in &ks {
                let changes = seq.windows(2).filter(|w| w[0].1 != w[1].1).count();
                let transitions = seq.len().saturating_sub(1);
                let capped: Vec<_> = seq.windows(2).filter(|w| w[0].2 && w[1].2).collect();
                let capped_changes = capped.iter().filter(|w| w[0].1 != w[1].1).count();
                all_changes += changes;
                all_transitions += transitions;
                all_capped += capped.len();
                all_capped_changes += capped_changes;
                let (lo, hi) = seq.iter().fold((usize::MAX, 0), |(lo, hi), &(_, k, _)| (lo.min(k), hi.max(k)));
                let mean = seq.iter().map(|&(_, k, _)| k as f64).sum::<f64>() / seq.len().max(1) as f64;
                println!(
                    "| {} | {r} | {d} | {} | {changes} | {:.3} | {capped_changes} / {} | {lo}..{hi} | {mean:.2} |",
                    selection_name(sel, base.fixed_k),
                    seq.len(),
                    changes as f64 / transitions.max(1) as f64,
                    capped.len()
                );
            }
            println!(
                "| {} | {r} | all | {all_transitions} transitions | {all_changes} | {:.3} | {all_capped_changes} / \
                 {all_capped} ({:.3}) | | replay {seconds:.2} s |",
                selection_name(sel, base.fixed_k),
                all_changes as f64 / all_transitions.max(1) as f64,
                all_capped_changes as f64 / all_capped.max(1) as f64
            );
            results.push((r, sel, ks));
        }
    }

    if show_k {
        println!();
        for (r, sel, ks) in &results {
            for (d, seq) in ks {
                let k: Vec<String> = seq.iter().map(|(_, k, _)| k.to_string()).collect();
                println!("{} restarts {r} {d}: k = {}", selection_name(*sel, base.fixed_k), k.join(" "));
            }
        }
    }

    // Restarts against restarts, same rule: (step, domain) pairs whose k differ.
    println!();
    for (i, (ra, sa, ka)) in results.iter().enumerate() {
        for (rb, sb, kb) in &results[i + 1..] {
            if sa != sb {
                continue;
            }
            let (mut differ, mut pairs) = (0, 0);
            for (d, seq) in ka {
                for (x, y) in seq.iter().zip(&kb[d]) {
                    pairs += 1;
                    differ += usize::from(x.1 != y.1);
                }
            }
            println!(
                "{}: restarts {ra} vs {rb}: k differs on {differ} of {pairs} (step, domain) pairs",
                selection_name(*sa, base.fixed_k)
            );
        }
    }

    // The rows' own k against a replay with the trainer's defaults (or the settings given).
    if steps.iter().any(|s| !s.dumped_k.is_empty()) {
        let ks = replay(&steps, &base);
        let (mut same, mut pairs) = (0, 0);
        for s in &steps {
            for (d, &k) in &s.dumped_k {
                if let Some(&(_, replayed, _)) = ks.get(d).and_then(|seq| seq.iter().find(|(st, ..)| *st == s.step)) {
                    pairs += 1;
                    same += usize::from(replayed as u64 == k);
                }
            }
        }
        println!(
            "rows' domain_clusters vs a replay with restarts {}, {}: {same} of {pairs} (step, domain) pairs agree",
            base.kmeans_restarts,
            selection_name(base.k_selection, base.fixed_k)
        );
    }
}
