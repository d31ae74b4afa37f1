//! Open-ended answer reward: Jaccard similarity of whitespace token sets
//! (docs/drpo.md section 3, "Jaccard"; QoQ-Med3).

use std::collections::HashSet;

use crate::answer::{last_boxed, strip_think};

/// |A ∩ B| / |A ∪ B| between the lowercased whitespace tokens of the last closed
/// `\boxed{}` outside `<think>` blocks and of `answer`. No box scores 0; both token sets
/// empty score 1; exactly one empty scores 0.
///
/// ```
/// use qoq_rewards::jaccard::jaccard_reward;
/// assert_eq!(jaccard_reward(r"\boxed{Left lower lobe}", "left lobe"), 2.0 / 3.0);
/// assert_eq!(jaccard_reward(r"<think>\boxed{x}</think>", "x"), 0.0);
/// ```
pub fn jaccard_reward(response: &str, answer: &str) -> f64 {
    let visible = strip_think(response);
    match last_boxed(&visible) {
        Some(boxed) => token_jaccard(boxed, answer),
        None => 0.0,
    }
}

/// Jaccard similarity of the lowercased whitespace-separated token sets of `a` and `b`.
pub fn token_jaccard(a: &str, b: &str) -> f64 {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    let ta: HashSet<&str> = a.split_whitespace().collect();
    let tb: HashSet<&str> = b.split_whitespace().collect();
    match (ta.is_empty(), tb.is_empty()) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => {
            let common = ta.intersection(&tb).count();
            common as f64 / (ta.len() + tb.len() - common) as f64
        }
    }
}
