//! Evaluation metrics with the paper's protocol (docs/drpo.md section 3, "Evaluation"):
//! per dataset, a one-vs-rest confusion matrix per label; a dataset's metric is the
//! unweighted mean over the labels present in its ground truth; a domain's is the mean over
//! its datasets; the overall figure is the mean over domains.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::answer::{answer_label_set, label_set, last_boxed, LabelOptions};
use crate::combine::Scores;
use crate::jaccard::jaccard_reward;

/// One-vs-rest counts of one label in one dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

/// The averaged metrics at every level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub specificity: f64,
}

impl Metrics {
    pub const NAMES: [&'static str; 5] = ["accuracy", "f1", "precision", "recall", "specificity"];

    fn of(c: &Confusion) -> Self {
        let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        Metrics {
            accuracy: ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn_),
            f1: ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn_),
            precision,
            recall,
            specificity: ratio(c.tn, c.tn + c.fp),
        }
    }

    fn values(&self) -> [f64; 5] {
        [self.accuracy, self.f1, self.precision, self.recall, self.specificity]
    }

    /// Unweighted mean; `None` for an empty input.
    fn mean<'a>(items: impl IntoIterator<Item = &'a Metrics>) -> Option<Metrics> {
        let mut sum = [0.0; 5];
        let mut n = 0usize;
        for m in items {
            for (s, v) in sum.iter_mut().zip(m.values()) {
                *s += v;
            }
            n += 1;
        }
        (n > 0).then(|| {
            let [accuracy, f1, precision, recall, specificity] = sum.map(|s| s / n as f64);
            Metrics { accuracy, f1, precision, recall, specificity }
        })
    }
}

/// A label's confusion counts and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    /// Samples whose ground truth holds the label.
    pub support: u64,
    #[serde(flatten)]
    pub confusion: Confusion,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// The figures of one level (dataset, domain or overall): the paper's label metrics, the
/// open-ended Jaccard, and the mean reward components when the responses were scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Level {
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Token Jaccard of the boxed answer against the ground truth (the MIMIC-IV metric,
    /// [`crate::jaccard::jaccard_reward`]): a dataset's is the mean over its samples.
    pub jaccard: f64,
    /// Mean reward components (`f1`, `iou`, `format`, `length`, `jaccard`, `overall`)
    /// under the scorer's weights; absent when no scores were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<Scores>,
}

impl Level {
    /// Unweighted mean; `None` for an empty input. The reward is averaged over the levels
    /// that have one.
    fn mean(levels: &[&Level]) -> Option<Level> {
        let metrics = Metrics::mean(levels.iter().map(|l| &l.metrics))?;
        let jaccard = levels.iter().map(|l| l.jaccard).sum::<f64>() / levels.len() as f64;
        let rewards: Vec<&Scores> = levels.iter().filter_map(|l| l.reward.as_ref()).collect();
        Some(Level { metrics, jaccard, reward: mean_scores(&rewards) })
    }
}

fn mean_scores(items: &[&Scores]) -> Option<Scores> {
    if items.is_empty() {
        return None;
    }
    let n = items.len() as f64;
    let avg = |f: fn(&Scores) -> f64| items.iter().map(|s| f(s)).sum::<f64>() / n;
    Some(Scores {
        f1: avg(|s| s.f1),
        iou: avg(|s| s.iou),
        format: avg(|s| s.format),
        length: avg(|s| s.length),
        jaccard: avg(|s| s.jaccard),
        overall: avg(|s| s.overall),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// The dataset's name (the key may be `domain/dataset`).
    pub name: String,
    pub domain: String,
    pub samples: u64,
    /// Label metrics: the mean over `labels`.
    #[serde(flatten)]
    pub level: Level,
    /// The labels present in the ground truth.
    pub labels: BTreeMap<String, LabelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    pub samples: u64,
    /// Mean over the datasets that have at least one ground-truth label.
    #[serde(flatten)]
    pub level: Level,
    /// Its datasets' keys in [`EvalReport::datasets`].
    pub datasets: Vec<String>,
}

/// The paper's evaluation: `overall` is the mean over `domains`, a domain's the mean over
/// its `datasets`, a dataset's the mean over the labels of its ground truth. Serialised as
/// `report.json` by `eval` and `score --metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub samples: u64,
    pub overall: Level,
    pub domains: BTreeMap<String, DomainReport>,
    /// Keyed by dataset name (`domain/dataset` for a name that occurs in two domains).
    pub datasets: BTreeMap<String, DatasetReport>,
}

impl EvalReport {
    /// Flat metric names for logs: `val/accuracy`, `val/jaccard`, `val/<domain>/f1`,
    /// `val/<domain>/<dataset>/accuracy`, ...
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut put = |prefix: String, l: &Level| {
            for (name, v) in Metrics::NAMES.iter().zip(l.metrics.values()) {
                out.insert(format!("{prefix}/{name}"), v);
            }
            out.insert(format!("{prefix}/jaccard"), l.jaccard);
        };
        put("val".into(), &self.overall);
        for (domain, d) in &self.domains {
            put(format!("val/{domain}"), &d.level);
        }
        for ds in self.datasets.values() {
            put(format!("val/{}/{}", ds.domain, ds.name), &ds.level);
        }
        out
    }

    /// The paper's table 2 layout in Markdown: domains as columns (then Overall), rows
    /// accuracy, F1 and Jaccard.
    pub fn markdown_table(&self) -> String {
        let domains: Vec<(&String, &DomainReport)> = self.domains.iter().collect();
        let mut out = String::from("| |");
        for (name, _) in &domains {
            out.push_str(&format!(" {name} |"));
        }
        out.push_str(" Overall |\n|---|");
        out.push_str(&"---|".repeat(domains.len() + 1));
        out.push('\n');
        let rows: [(&str, LevelFigure); 3] =
            [("Accuracy", |l| l.metrics.accuracy), ("F1", |l| l.metrics.f1), ("Jaccard", |l| l.jaccard)];
        for (label, get) in rows {
            out.push_str(&format!("| {label} |"));
            for (_, d) in &domains {
                out.push_str(&format!(" {:.3} |", get(&d.level)));
            }
            out.push_str(&format!(" {:.3} |\n", get(&self.overall)));
        }
        out.push_str(&format!("\n{} samples", self.samples));
        for (name, d) in &domains {
            out.push_str(&format!("; {name} {}", d.samples));
        }
        out.push('\n');
        out
    }
}

/// One figure of a [`Level`] (a row of the Markdown table).
type LevelFigure = fn(&Level) -> f64;

#[derive(Default)]
struct DatasetCounts {
    samples: u64,
    labels: HashMap<String, Confusion>,
    jaccard_sum: f64,
    /// Sum of each reward component and the number of scored samples.
    scores: Option<(Scores, u64)>,
}

/// Accumulates predictions; memory grows with the number of distinct labels, not samples.
///
/// ```
/// use qoq_rewards::eval::Evaluator;
/// let mut ev = Evaluator::default();
/// ev.add("chest_xray", "vindr", r"\boxed{Pneumonia}", "pneumonia", None);
/// ev.add("chest_xray", "vindr", r"\boxed{Normal}", "effusion", None);
/// let report = ev.report();
/// assert_eq!(report.overall.metrics.accuracy, 0.75); // pneumonia 2/2, effusion 1/2
/// assert_eq!(report.overall.jaccard, 0.5);
/// assert_eq!(report.datasets["vindr"].samples, 2);
/// ```
#[derive(Default)]
pub struct Evaluator {
    options: LabelOptions,
    datasets: BTreeMap<(String, String), DatasetCounts>,
}

impl Evaluator {
    pub fn new(options: LabelOptions) -> Self {
        Self { options, datasets: BTreeMap::new() }
    }

    /// Add one response: its labels are those of its last closed `\boxed{}` (none without
    /// one); `scores`, its reward, is averaged into the report's `reward`.
    pub fn add(&mut self, domain: &str, dataset: &str, response: &str, answer: &str, scores: Option<&Scores>) {
        let predicted = last_boxed(response).map(|b| label_set(b, self.options)).unwrap_or_default();
        self.add_labels(domain, dataset, &predicted, &answer_label_set(answer, self.options));
        let counts = self.datasets.get_mut(&(domain.to_string(), dataset.to_string())).expect("added above");
        counts.jaccard_sum += jaccard_reward(response, answer);
        if let Some(s) = scores {
            let (sum, n) = counts.scores.get_or_insert((Scores::default(), 0));
            sum.f1 += s.f1;
            sum.iou += s.iou;
            sum.format += s.format;
            sum.length += s.length;
            sum.jaccard += s.jaccard;
            sum.overall += s.overall;
            *n += 1;
        }
    }

    /// Add one sample's predicted and true label sets (no Jaccard, no reward).
    pub fn add_labels(&mut self, domain: &str, dataset: &str, predicted: &HashSet<String>, truth: &HashSet<String>) {
        let counts = self.datasets.entry((domain.to_string(), dataset.to_string())).or_default();
        counts.samples += 1;
        for label in predicted.union(truth) {
            let c = counts.labels.entry(label.clone()).or_default();
            match (predicted.contains(label), truth.contains(label)) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                _ => c.fn_ += 1,
            }
        }
    }

    pub fn report(&self) -> EvalReport {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (_, dataset) in self.datasets.keys() {
            *names.entry(dataset.as_str()).or_default() += 1;
        }
        let mut domains: BTreeMap<String, DomainReport> = BTreeMap::new();
        let mut datasets: BTreeMap<String, DatasetReport> = BTreeMap::new();
        for ((domain, dataset), counts) in &self.datasets {
            let labels: BTreeMap<String, LabelReport> = counts
                .labels
                .iter()
                .filter(|(_, c)| c.tp + c.fn_ > 0)
                .map(|(label, c)| {
                    // Samples where the label is in neither set are its true negatives.
                    let confusion = Confusion { tn: counts.samples - c.tp - c.fp - c.fn_, ..*c };
                    let report = LabelReport { support: c.tp + c.fn_, confusion, metrics: Metrics::of(&confusion) };
                    (label.clone(), report)
                })
                .collect();
            let level = Level {
                metrics: Metrics::mean(labels.values().map(|l| &l.metrics)).unwrap_or_default(),
                jaccard: counts.jaccard_sum / counts.samples.max(1) as f64,
                reward: counts.scores.map(|(sum, n)| {
                    let n = n.max(1) as f64;
                    Scores {
                        f1: sum.f1 / n,
                        iou: sum.iou / n,
                        format: sum.format / n,
                        length: sum.length / n,
                        jaccard: sum.jaccard / n,
                        overall: sum.overall / n,
                    }
                }),
            };
            let key = if names[dataset.as_str()] > 1 { format!("{domain}/{dataset}") } else { dataset.clone() };
            let entry = domains.entry(domain.clone()).or_insert_with(|| DomainReport {
                samples: 0,
                level: Level::default(),
                datasets: Vec::new(),
            });
            entry.samples += counts.samples;
            entry.datasets.push(key.clone());
            datasets.insert(
                key,
                DatasetReport { name: dataset.clone(), domain: domain.clone(), samples: counts.samples, level, labels },
            );
        }
        let active = |ds: &DatasetReport| !ds.labels.is_empty();
        for d in domains.values_mut() {
            let levels: Vec<&Level> =
                d.datasets.iter().map(|k| &datasets[k]).filter(|ds| active(ds)).map(|ds| &ds.level).collect();
            d.level = Level::mean(&levels).unwrap_or_default();
        }
        let levels: Vec<&Level> =
            domains.values().filter(|d| d.datasets.iter().any(|k| active(&datasets[k]))).map(|d| &d.level).collect();
        EvalReport {
            samples: self.datasets.values().map(|c| c.samples).sum(),
            overall: Level::mean(&levels).unwrap_or_default(),
            domains,
            datasets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vs_rest_per_label_then_unweighted_means() {
        let mut ev = Evaluator::default();
        // Dataset A (domain x): 4 samples.
        ev.add("x", "a", r"\boxed{cat}", "cat", None);
        ev.add("x", "a", r"\boxed{cat, dog}", "dog", None);
        ev.add("x", "a", "no answer", "dog", None);
        ev.add("x", "a", r"\boxed{bird}", "cat", None);
        // Dataset B (domain x): 1 sample. Dataset C (domain y): 1 sample.
        ev.add("x", "b", r"\boxed{z}", "z", None);
        ev.add("y", "c", r"\boxed{q}", "r", None);
        let r = ev.report();
        let a = &r.datasets["a"];
        // cat: tp 1, fp 1, fn 1, tn 1; dog: tp 1, fp 0, fn 1, tn 2; bird never true: ignored.
        assert_eq!(a.labels["cat"].confusion, Confusion { tp: 1, fp: 1, fn_: 1, tn: 1 });
        assert_eq!(a.labels["dog"].confusion, Confusion { tp: 1, fp: 0, fn_: 1, tn: 2 });
        assert!(!a.labels.contains_key("bird"));
        assert_eq!(a.level.metrics.accuracy, (0.5 + 0.75) / 2.0);
        assert_eq!(a.level.metrics.f1, (0.5 + 2.0 / 3.0) / 2.0);
        assert_eq!(r.domains["x"].level.metrics.accuracy, (a.level.metrics.accuracy + 1.0) / 2.0);
        assert_eq!(r.domains["y"].level.metrics.accuracy, 0.0);
        assert_eq!(r.overall.metrics.accuracy, r.domains["x"].level.metrics.accuracy / 2.0);
        assert_eq!(r.samples, 6);
        let flat = r.flat();
        assert_eq!(flat["val/x/a/accuracy"], a.level.metrics.accuracy);
        assert_eq!(flat["val/f1"], r.overall.metrics.f1);
    }

    #[test]
    fn jaccard_rewards_and_shared_dataset_names() {
        let mut ev = Evaluator::default();
        let s = |overall: f64| Scores { overall, f1: overall, ..Default::default() };
        // Domain m, dataset d: token Jaccard 2/3 and 0 (no box).
        ev.add("m", "d", r"\boxed{left lobe}", "left lower lobe", Some(&s(1.0)));
        ev.add("m", "d", "none", "sepsis", Some(&s(0.0)));
        // The same dataset name in another domain, unscored.
        ev.add("n", "d", r"\boxed{sepsis}", "sepsis", None);
        let r = ev.report();
        assert_eq!(r.datasets.keys().collect::<Vec<_>>(), ["m/d", "n/d"]);
        let md = &r.datasets["m/d"];
        assert_eq!((md.name.as_str(), md.domain.as_str(), md.samples), ("d", "m", 2));
        assert!((md.level.jaccard - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(md.level.reward.unwrap().overall, 0.5);
        assert_eq!(r.datasets["n/d"].level.reward, None);
        assert!((r.overall.jaccard - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        // Only scored levels enter the reward mean.
        assert_eq!(r.overall.reward.unwrap().overall, 0.5);
        assert_eq!(r.domains["m"].datasets, vec!["m/d".to_string()]);
        let flat = r.flat();
        assert_eq!(flat["val/n/d/jaccard"], 1.0);
        let json = serde_json::to_value(&r).unwrap();
        for key in ["overall", "domains", "datasets"] {
            assert!(json[key].is_object(), "{key}");
        }
        assert!(json["overall"]["f1"].is_number() && json["domains"]["m"]["accuracy"].is_number());
        assert!(json["datasets"]["n/d"].get("reward").is_none());
        let table = r.markdown_table();
        assert!(table.starts_with("| | m | n | Overall |\n|---|---|---|---|\n| Accuracy |"), "{table}");
        assert!(table.contains("| Jaccard | 0.333 | 1.000 | 0.667 |"), "{table}");
    }
}
