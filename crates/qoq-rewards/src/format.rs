//! Format and length rewards (docs/drpo.md section 3, "Format" and "Length"; QoQ-Med code).

use serde_json::Value;

use crate::grounding::as_bbox;
use crate::json_block::{find_fence, parse_block, FencedBlock, Parsed};

/// Continuous format score in [0, 1]; the first closed fenced block is the one judged
/// (a block tagged other than `json` does not parse):
///
/// | earned for                                                    | points |
/// |---------------------------------------------------------------|--------|
/// | a ``` fence anywhere                                           | 0.2    |
/// | a ```json fence anywhere                                       | +0.1   |
/// | the first block parses as JSON (lenient reader only, if enabled) | +0.2 (+0.1) |
/// | the value is a list                                           | +0.1   |
/// | x the fraction of items that are objects with a 4-number `bbox_2d` and a `label` | +0.4 |
///
/// ```
/// use qoq_rewards::{format::format_reward, json_block::fenced_blocks};
/// let r = "```json\n[{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"nodule\"}]\n```";
/// assert_eq!(format_reward(r, &fenced_blocks(r), false), 1.0);
/// ```
pub fn format_reward(response: &str, blocks: &[FencedBlock<'_>], lenient: bool) -> f64 {
    let Some(first_fence) = find_fence(response) else { return 0.0 };
    let mut score = 0.2;
    if memchr::memmem::find(&response.as_bytes()[first_fence..], b"```json").is_some() {
        score += 0.1;
    }
    let Some(first) = blocks.first() else { return score };
    let value = match parse_block(first, lenient) {
        Some((value, Parsed::Json)) => {
            score += 0.2;
            value
        }
        Some((value, Parsed::Lenient)) => {
            score += 0.1;
            value
        }
        None => return score,
    };
    let Value::Array(items) = value else { return score };
    score += 0.1;
    if !items.is_empty() {
        let valid = items.iter().filter(|item| is_valid_box_item(item)).count();
        score += 0.4 * valid as f64 / items.len() as f64;
    }
    score
}

/// An object with a `label` and a `bbox_2d` of exactly four (finite) numbers.
fn is_valid_box_item(item: &Value) -> bool {
    item.as_object().is_some_and(|o| o.contains_key("label") && o.get("bbox_2d").and_then(as_bbox).is_some())
}

/// Responses longer than this many characters earn the full length reward.
pub const FULL_LENGTH_CHARS: usize = 600;

/// 1 above [`FULL_LENGTH_CHARS`] Unicode scalar values, else 0.001 per character.
///
/// ```
/// use qoq_rewards::format::length_reward;
/// assert_eq!(length_reward(&"é".repeat(601)), 1.0);
/// assert!((length_reward(&"a".repeat(600)) - 0.6).abs() < 1e-12);
/// ```
pub fn length_reward(response: &str) -> f64 {
    let chars = response.chars().count();
    if chars > FULL_LENGTH_CHARS {
        1.0
    } else {
        0.001 * chars as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_block::fenced_blocks;

    fn score(r: &str, lenient: bool) -> f64 {
        (format_reward(r, &fenced_blocks(r), lenient) * 1e9).round() / 1e9
    }

    #[test]
    fn points_add_up_as_specified() {
        assert_eq!(score("no fence", false), 0.0);
        assert_eq!(score("``` unclosed", false), 0.2);
        assert_eq!(score("```json unclosed", false), 0.3);
        assert_eq!(score("```json\nnot json\n```", false), 0.3);
        assert_eq!(score("```\n{\"a\": 1}\n```", false), 0.4);
        assert_eq!(score("```json\n[]\n```", false), 0.6);
        let half = r#"```json
[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4]}]
```"#;
        assert_eq!(score(half, false), 0.8);
        let single_quotes = "```json\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'},]\n```";
        assert_eq!(score(single_quotes, false), 0.3);
        assert_eq!(score(single_quotes, true), 0.9);
        // Only the first block is judged; a non-JSON tag does not parse.
        assert_eq!(score("```json\nbad\n``` ```json\n[]\n```", false), 0.3);
        assert_eq!(score("```python\n[]\n```", false), 0.2);
        assert_eq!(score("```\nsee below\n``` ```json\n[]\n```", false), 0.3);
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(length_reward(""), 0.0);
        assert_eq!(length_reward(&"a".repeat(601)), 1.0);
        assert!((length_reward(&"€".repeat(300)) - 0.3).abs() < 1e-12);
    }
}
