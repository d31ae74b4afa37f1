//! Outputs a policy could learn to game the reward with, or that could crash or stall the
//! scorer. Each must earn exactly what the spec allows.

use qoq_rewards::{Mask, RewardConfig, Scorer, Scores, Target};

fn scorer() -> Scorer {
    Scorer::new(&RewardConfig::default()).unwrap()
}

fn score(response: &str, answer: &str, boxes: &[[f64; 4]]) -> Scores {
    scorer().score(response, &Target { answer, boxes, ..Default::default() })
}

fn fenced(json: &str) -> String {
    format!("```json\n{json}\n```")
}

#[test]
fn repeated_empty_boxes_earn_nothing() {
    let s = score(&r"\boxed{}".repeat(5_000), "pneumonia", &[]);
    assert_eq!((s.f1, s.jaccard), (0.0, 0.0));
}

#[test]
fn several_boxed_answers_only_the_last_counts() {
    assert_eq!(score(r"\boxed{pneumonia} \boxed{edema}", "pneumonia", &[]).f1, 0.0);
    assert_eq!(score(r"\boxed{edema} \boxed{pneumonia}", "pneumonia", &[]).f1, 1.0);
}

#[test]
fn listing_every_label_is_penalised_by_precision() {
    let all: Vec<String> = (0..20).map(|i| format!("label{i}")).collect();
    let s = score(&format!(r"\boxed{{{}}}", all.join(", ")), "label3", &[]);
    assert!((s.f1 - 2.0 / 21.0).abs() < 1e-12, "{}", s.f1);
}

#[test]
fn labels_that_are_substrings_of_other_labels_do_not_match() {
    assert_eq!(score(r"\boxed{pneumonia}", "bacterial pneumonia", &[]).f1, 0.0);
    assert_eq!(score(r"\boxed{effusion}", "pleural effusion, effusion", &[]).f1, 2.0 / 3.0);
    assert_eq!(score(r"\boxed{Pleural}", "pleural effusion", &[]).f1, 0.0);
}

#[test]
fn empty_and_malformed_boxes_score_zero_and_stay_in_the_denominator() {
    let gt = [[10.0, 10.0, 50.0, 50.0]];
    let s = score(&fenced(r#"[{"bbox_2d": [], "label": "a"}]"#), "a", &gt);
    assert_eq!(s.iou, 0.0);
    assert!((s.format - 0.6).abs() < 1e-12, "{}", s.format);
    let half = fenced(r#"[{"bbox_2d": [10, 10, 50, 50], "label": "a"}, {"bbox_2d": [1, 2], "label": "b"}]"#);
    assert_eq!(score(&half, "a", &gt).iou, 0.5);
    let zero_area = fenced(r#"[{"bbox_2d": [20, 20, 20, 40], "label": "a"}]"#);
    assert_eq!(score(&zero_area, "a", &gt).iou, 0.0);
}

#[test]
fn nan_infinite_and_huge_coordinates_earn_nothing() {
    let gt = [[10.0, 10.0, 50.0, 50.0]];
    for json in [
        r#"[{"bbox_2d": [NaN, 10, 50, 50], "label": "a"}]"#,
        r#"[{"bbox_2d": [Infinity, 10, 50, 50], "label": "a"}]"#,
        r#"[{"bbox_2d": [1e400, 10, 50, 50], "label": "a"}]"#,
    ] {
        let s = score(&fenced(json), "a", &gt);
        assert_eq!(s.iou, 0.0, "{json}");
        // Not JSON (serde_json refuses NaN / out-of-range): only the fence points.
        assert!((s.format - 0.3).abs() < 1e-12, "{json}: {}", s.format);
    }
    // A box covering everything: the union is astronomically large (or infinite).
    let s = score(&fenced(r#"[{"bbox_2d": [1e300, 1e300, -1e300, -1e300], "label": "a"}]"#), "a", &gt);
    assert!(s.iou < 1e-290, "{}", s.iou);
}

#[test]
fn boxes_outside_the_image_earn_nothing() {
    let gt = [[90.0, 90.0, 100.0, 100.0]];
    let s = score(&fenced(r#"[{"bbox_2d": [200, 200, 300, 300], "label": "a"}]"#), "a", &gt);
    assert_eq!(s.iou, 0.0);
    let mask = Mask::from_fn(100, 100, |x, y| x >= 90 && y >= 90).unwrap();
    let target = Target { answer: "a", mask: Some(&mask), ..Default::default() };
    let s = scorer().score(&fenced(r#"[{"bbox_2d": [200, 200, 300, 300], "label": "a"}]"#), &target);
    assert_eq!(s.iou, 0.0, "clamped to a degenerate corner box");
}

#[test]
fn ten_megabyte_responses_and_deep_nesting_finish() {
    let big = format!("<think>{}</think>{}\\boxed{{a}}", "lorem ipsum ".repeat(900_000), fenced("[]"));
    assert!(big.len() > 10_000_000);
    let s = score(&big, "a", &[]);
    assert_eq!((s.f1, s.length, s.jaccard), (1.0, 1.0, 1.0));

    let deep = format!(r"\boxed{{{}x{}}}", "{".repeat(2_000_000), "}".repeat(2_000_000));
    assert_eq!(score(&deep, "x", &[]).f1, 0.0, "the braces stay part of the label");
    let unclosed = r"\boxed{".repeat(1_500_000);
    assert_eq!(score(&unclosed, "x", &[]).f1, 0.0);
    let deep_json = fenced(&format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000)));
    let s = score(&deep_json, "x", &[[0.0, 0.0, 1.0, 1.0]]);
    assert!((s.format - 0.3).abs() < 1e-12, "too deep is not JSON: {}", s.format);
    let many_fences = "```x```".repeat(500_000);
    assert_eq!(score(&many_fences, "x", &[[0.0, 0.0, 1.0, 1.0]]).iou, 0.0);
}

#[test]
fn escaped_braces_cannot_close_a_box_early() {
    assert_eq!(score(r"\boxed{a \} b}", r"a \} b", &[]).f1, 1.0);
    assert_eq!(score(r"\boxed{\text{Pneumonia}}", "pneumonia", &[]).f1, 1.0);
}

#[test]
fn boxed_inside_think_counts_for_f1_but_not_jaccard() {
    let s = score(r"<think>\boxed{a}</think> final", "a", &[]);
    assert_eq!((s.f1, s.jaccard), (1.0, 0.0));
}
