//! Diagnosis reward: set F1 between the labels of the last closed `\boxed{}` and the
//! ground-truth labels (docs/drpo.md section 3, "F1").

use std::collections::HashSet;

use crate::answer::{answer_label_set, label_set, last_boxed, LabelOptions};

/// F1 of the response's boxed labels against `answer` (labels joined by ", "; an answer
/// stored as `\boxed{...}` is unwrapped).
/// No closed box, or no label in common, scores 0.
///
/// ```
/// use qoq_rewards::{f1::f1_reward, answer::LabelOptions};
/// let o = LabelOptions::default();
/// assert_eq!(f1_reward(r"<think>..</think> \boxed{Pneumonia}", "pneumonia", o), 1.0);
/// assert!((f1_reward(r"\boxed{a, b}", "a", o) - 2.0 / 3.0).abs() < 1e-12);
/// ```
pub fn f1_reward(response: &str, answer: &str, options: LabelOptions) -> f64 {
    match last_boxed(response) {
        Some(boxed) => set_f1(&label_set(boxed, options), &answer_label_set(answer, options)),
        None => 0.0,
    }
}

/// 2PR / (P + R) over two label sets; 0 when they share nothing (including both empty).
pub fn set_f1(predicted: &HashSet<String>, truth: &HashSet<String>) -> f64 {
    let tp = predicted.intersection(truth).count();
    if tp == 0 {
        return 0.0;
    }
    let precision = tp as f64 / predicted.len() as f64;
    let recall = tp as f64 / truth.len() as f64;
    2.0 * precision * recall / (precision + recall)
}
