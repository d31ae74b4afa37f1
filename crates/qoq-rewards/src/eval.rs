//! Evaluation metrics with the paper's protocol (docs/drpo.md section 3, "Evaluation"):
//! per dataset, a one-vs-rest confusion matrix per label; a dataset's metric is the
//! unweighted mean over the labels present in its ground truth; a domain's is the mean over
//! its datasets; the overall figure is the mean over domains.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::answer::{answer_label_set, label_set, last_boxed, LabelOptions};

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

#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub samples: u64,
    /// Mean over `labels`.
    pub metrics: Metrics,
    /// The labels present in the ground truth.
    pub labels: BTreeMap<String, LabelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    /// Mean over the datasets that have at least one ground-truth label.
    pub metrics: Metrics,
    pub datasets: BTreeMap<String, DatasetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub samples: u64,
    /// Mean over domains.
    pub overall: Metrics,
    pub domains: BTreeMap<String, DomainReport>,
}

impl EvalReport {
    /// Flat metric names for logs: `val/accuracy`, `val/<domain>/f1`,
    /// `val/<domain>/<dataset>/accuracy`, ...
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut put = |prefix: String, m: &Metrics| {
            for (name, v) in Metrics::NAMES.iter().zip(m.values()) {
                out.insert(format!("{prefix}/{name}"), v);
            }
        };
        put("val".into(), &self.overall);
        for (domain, d) in &self.domains {
            put(format!("val/{domain}"), &d.metrics);
            for (dataset, ds) in &d.datasets {
                put(format!("val/{domain}/{dataset}"), &ds.metrics);
            }
        }
        out
    }
}

#[derive(Default)]
struct DatasetCounts {
    samples: u64,
    labels: HashMap<String, Confusion>,
}

/// Accumulates predictions; memory grows with the number of distinct labels, not samples.
///
/// ```
/// use qoq_rewards::eval::Evaluator;
/// let mut ev = Evaluator::default();
/// ev.add("chest_xray", "vindr", r"\boxed{Pneumonia}", "pneumonia");
/// ev.add("chest_xray", "vindr", r"\boxed{Normal}", "effusion");
/// let report = ev.report();
/// assert_eq!(report.overall.accuracy, 0.75); // pneumonia 2/2, effusion 1/2
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

    /// Add one response: its labels are those of its last closed `\boxed{}` (none without one).
    pub fn add(&mut self, domain: &str, dataset: &str, response: &str, answer: &str) {
        let predicted = last_boxed(response).map(|b| label_set(b, self.options)).unwrap_or_default();
        self.add_labels(domain, dataset, &predicted, &answer_label_set(answer, self.options));
    }

    /// Add one sample's predicted and true label sets.
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
        let mut domains: BTreeMap<String, DomainReport> = BTreeMap::new();
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
            let metrics = Metrics::mean(labels.values().map(|l| &l.metrics)).unwrap_or_default();
            let entry = domains
                .entry(domain.clone())
                .or_insert_with(|| DomainReport { metrics: Metrics::default(), datasets: BTreeMap::new() });
            entry.datasets.insert(dataset.clone(), DatasetReport { samples: counts.samples, metrics, labels });
        }
        for d in domains.values_mut() {
            let active = d.datasets.values().filter(|ds| !ds.labels.is_empty()).map(|ds| &ds.metrics);
            d.metrics = Metrics::mean(active).unwrap_or_default();
        }
        let active = domains.values().filter(|d| d.datasets.values().any(|ds| !ds.labels.is_empty()));
        EvalReport {
            samples: self.datasets.values().map(|c| c.samples).sum(),
            overall: Metrics::mean(active.map(|d| &d.metrics)).unwrap_or_default(),
            domains,
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
        ev.add("x", "a", r"\boxed{cat}", "cat");
        ev.add("x", "a", r"\boxed{cat, dog}", "dog");
        ev.add("x", "a", "no answer", "dog");
        ev.add("x", "a", r"\boxed{bird}", "cat");
        // Dataset B (domain x): 1 sample. Dataset C (domain y): 1 sample.
        ev.add("x", "b", r"\boxed{z}", "z");
        ev.add("y", "c", r"\boxed{q}", "r");
        let r = ev.report();
        let a = &r.domains["x"].datasets["a"];
        // cat: tp 1, fp 1, fn 1, tn 1; dog: tp 1, fp 0, fn 1, tn 2; bird never true: ignored.
        assert_eq!(a.labels["cat"].confusion, Confusion { tp: 1, fp: 1, fn_: 1, tn: 1 });
        assert_eq!(a.labels["dog"].confusion, Confusion { tp: 1, fp: 0, fn_: 1, tn: 2 });
        assert!(!a.labels.contains_key("bird"));
        assert_eq!(a.metrics.accuracy, (0.5 + 0.75) / 2.0);
        assert_eq!(a.metrics.f1, (0.5 + 2.0 / 3.0) / 2.0);
        assert_eq!(r.domains["x"].metrics.accuracy, (a.metrics.accuracy + 1.0) / 2.0);
        assert_eq!(r.domains["y"].metrics.accuracy, 0.0);
        assert_eq!(r.overall.accuracy, r.domains["x"].metrics.accuracy / 2.0);
        assert_eq!(r.samples, 6);
        let flat = r.flat();
        assert_eq!(flat["val/x/a/accuracy"], a.metrics.accuracy);
        assert_eq!(flat["val/f1"], r.overall.f1);
    }
}
