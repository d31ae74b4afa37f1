//! Property tests of the reward invariants (proptest).

use std::collections::HashSet;

use proptest::prelude::*;
use qoq_rewards::answer::{label_set, LabelOptions};
use qoq_rewards::f1::set_f1;
use qoq_rewards::grounding::box_iou;
use qoq_rewards::jaccard::token_jaccard;
use qoq_rewards::{Mask, Preset, RewardConfig, Scorer, Target};

/// Fragments that exercise every parser: boxes, braces, fences, JSON, think tags, labels.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r"\boxed{".to_string()),
        Just("}".to_string()),
        Just("{".to_string()),
        Just(r"\{".to_string()),
        Just("```".to_string()),
        Just("```json\n".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(r#"{"bbox_2d": ["#.to_string()),
        Just(r#""label": "x"}"#.to_string()),
        Just(", ".to_string()),
        Just(" and ".to_string()),
        Just("&".to_string()),
        Just("<think>".to_string()),
        Just("</think>".to_string()),
        Just("'".to_string()),
        (-1e6f64..1e6).prop_map(|x| format!("{x}")),
        "[a-zA-Z ]{0,8}",
        "\\PC{0,4}",
    ]
}

fn response() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..40).prop_map(|v| v.concat())
}

fn bbox() -> impl Strategy<Value = [f64; 4]> {
    prop::array::uniform4(-50.0f64..150.0)
}

fn labels() -> impl Strategy<Value = HashSet<String>> {
    prop::collection::hash_set("[a-d]{1,2}", 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_component_is_in_unit_range(r in response(), answer in "[a-z, &]{0,12}") {
        qoq_rewards::testing::check_invariants(format!("{r}\0{answer}").as_bytes());
    }

    #[test]
    fn f1_is_symmetric_and_one_only_for_equal_sets(a in labels(), b in labels()) {
        prop_assert_eq!(set_f1(&a, &b), set_f1(&b, &a));
        prop_assert_eq!(set_f1(&a, &b) == 1.0, a == b && !a.is_empty());
    }

    #[test]
    fn f1_reward_is_symmetric_in_prediction_and_truth(a in "[a-c]{1,3}(, [a-c]{1,3}){0,3}", b in "[a-c]{1,3}(, [a-c]{1,3}){0,3}") {
        let o = LabelOptions::default();
        let ab = qoq_rewards::f1::f1_reward(&format!(r"\boxed{{{a}}}"), &b, o);
        let ba = qoq_rewards::f1::f1_reward(&format!(r"\boxed{{{b}}}"), &a, o);
        prop_assert_eq!(ab, ba);
        prop_assert_eq!(ab, set_f1(&label_set(&a, o), &label_set(&b, o)));
    }

    #[test]
    fn box_iou_is_symmetric_bounded_and_one_with_itself(a in bbox(), b in bbox()) {
        let ab = box_iou(&a, &b);
        prop_assert!((0.0..=1.0).contains(&ab));
        prop_assert_eq!(ab, box_iou(&b, &a));
        let area = (a[2] - a[0]).abs() * (a[3] - a[1]).abs();
        if area > 0.0 {
            prop_assert!((box_iou(&a, &a) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn mask_iou_matches_brute_force_pixels(
        w in 1u32..24, h in 1u32..24, seed in any::<u64>(), b in bbox(),
    ) {
        let region = |x: u32, y: u32| (seed >> ((x * 7 + y * 13) % 64)) & 1 == 1;
        let mask = Mask::from_fn(w, h, region).unwrap();
        // The spec, pixel by pixel: truncate, clamp, swap, inclusive; degenerate = empty.
        let clamp = |v: f64, n: u32| (v.trunc() as i64).clamp(0, n as i64 - 1);
        let (xa, xb, ya, yb) = (clamp(b[0], w), clamp(b[2], w), clamp(b[1], h), clamp(b[3], h));
        let (x1, x2, y1, y2) = (xa.min(xb), xa.max(xb), ya.min(yb), ya.max(yb));
        let (mut inter, mut union) = (0u32, 0u32);
        for y in 0..h as i64 {
            for x in 0..w as i64 {
                let in_box = x1 < x2 && y1 < y2 && (x1..=x2).contains(&x) && (y1..=y2).contains(&y);
                let in_mask = region(x as u32, y as u32);
                inter += (in_box && in_mask) as u32;
                union += (in_box || in_mask) as u32;
            }
        }
        let expected = if mask.area() == 0 || union == 0 { 0.0 } else { inter as f64 / union as f64 };
        prop_assert!((mask.box_iou(&b) - expected).abs() < 1e-12, "{} vs {}", mask.box_iou(&b), expected);
    }

    #[test]
    fn mask_iou_of_its_own_rectangle_is_one(x1 in 0u32..20, y1 in 0u32..20, dx in 1u32..10, dy in 1u32..10) {
        let (x2, y2) = (x1 + dx, y1 + dy);
        let mask = Mask::from_fn(32, 32, |x, y| (x1..=x2).contains(&x) && (y1..=y2).contains(&y)).unwrap();
        prop_assert_eq!(mask.box_iou(&[x1 as f64, y1 as f64, x2 as f64, y2 as f64]), 1.0);
    }

    #[test]
    fn jaccard_is_symmetric_and_bounded(a in "[a-c ]{0,12}", b in "[a-c ]{0,12}") {
        let j = token_jaccard(&a, &b);
        prop_assert!((0.0..=1.0).contains(&j));
        prop_assert_eq!(j, token_jaccard(&b, &a));
    }

    #[test]
    fn batch_scoring_equals_one_by_one(rs in prop::collection::vec(response(), 1..20)) {
        let scorer = Scorer::new(&RewardConfig { preset: Some(Preset::QoqMed3), ..Default::default() }).unwrap();
        let boxes = [[0.0, 0.0, 8.0, 8.0]];
        let items: Vec<(&str, Target)> = rs.iter().map(|r| (r.as_str(), Target { answer: "a", boxes: &boxes, ..Default::default() })).collect();
        let batch = scorer.score_batch(&items);
        for ((r, t), s) in items.iter().zip(&batch) {
            prop_assert_eq!(&scorer.score(r, t), s);
        }
    }
}
