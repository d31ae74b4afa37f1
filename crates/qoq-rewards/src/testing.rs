//! Invariant checks shared by the fuzz target (`fuzz/`) and the corpus test: whatever the
//! bytes, scoring must not panic, must stay in range, and must agree between modes.

use crate::grounding::IouAggregation;
use crate::{Mask, Preset, RewardConfig, Scorer, Target};

/// Split fuzz input into (response, answer) at the first NUL; score it every way; panic on
/// a broken invariant.
pub fn check_invariants(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (response, answer) = text.split_once('\0').unwrap_or((&text, "a, b"));
    let boxes = [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 40.0, 30.0]];
    let mask = Mask::from_fn(32, 24, |x, y| (x + y) % 3 == 0 && x > 4).expect("fixed size");
    let targets = [
        Target { answer, ..Default::default() },
        Target { answer, boxes: &boxes, ..Default::default() },
        Target { answer, boxes: &boxes, mask: Some(&mask) },
    ];
    for preset in Preset::ALL {
        for (aggregation, lenient, normalize) in
            [(IouAggregation::Mean, false, true), (IouAggregation::Max, true, false)]
        {
            let config = RewardConfig {
                preset: Some(preset),
                iou_aggregation: aggregation,
                lenient_json: lenient,
                normalize_labels: normalize,
                ..Default::default()
            };
            let scorer = Scorer::new(&config).expect("presets are valid");
            for target in &targets {
                let s = scorer.score(response, target);
                for (name, v) in s.components() {
                    assert!((0.0..=1.0).contains(&v), "{name} = {v} out of [0, 1]");
                }
                assert!((0.0..=1.0 + 1e-12).contains(&s.overall), "overall = {}", s.overall);
            }
        }
    }
}
