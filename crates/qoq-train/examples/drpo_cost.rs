//! What DRPO's advantage step costs next to GRPO's at the paper's scale: 512 prompts x
//! G = 5 per step, 13 domains, rewards from the qoq-med weights (continuous IoU, so reward
//! vectors rarely repeat), the history of every domain growing step after step.
//!
//!     cargo run --release -p qoq-train --example drpo_cost [-- STEPS]
//!
//! Prints the milliseconds of one advantage computation at chosen steps of a run, for GRPO,
//! DRPO (whole history, as released) and DRPO with history_window = 2048.

use std::time::Instant;

use qoq_data::rng::{stream, unit};
use qoq_train::advantage::{AdvantageConfig, DrpoHistory, Estimator, Group};

const PROMPTS: usize = 512;
const G: usize = 5;
const DOMAINS: usize = 13;

fn batch(step: u64) -> Vec<Group> {
    let mut r = stream(7, &[step]);
    (0..PROMPTS)
        .map(|q| {
            // Each question has a difficulty; responses score around it.
            let difficulty = unit(&mut r);
            let rewards = (0..G)
                .map(|_| {
                    let correct = if unit(&mut r) > difficulty { 1.0 } else { 0.0 };
                    let iou = unit(&mut r) * (1.0 - difficulty);
                    let format = if unit(&mut r) > 0.1 { 1.0 } else { 0.5 };
                    0.5 * correct + 0.3 * iou + 0.1 * format + 0.1
                })
                .collect();
            Group { domain: format!("domain_{}", q % DOMAINS), rewards }
        })
        .collect()
}

fn main() {
    let steps: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let checkpoints: Vec<u64> = [1, 10, 50, 100, 200, 500, 1000].into_iter().filter(|&s| s <= steps).collect();
    let variants = [
        ("grpo", AdvantageConfig { estimator: Estimator::Grpo, ..Default::default() }),
        ("drpo", AdvantageConfig::default()),
        ("drpo window 2048", AdvantageConfig { history_window: Some(2048), ..Default::default() }),
    ];
    println!("threads: {}", rayon::current_num_threads());
    println!("{:<18} {}", "step", checkpoints.iter().map(|s| format!("{s:>10}")).collect::<String>());
    for (name, config) in variants {
        let mut history = DrpoHistory::default();
        let mut row = Vec::new();
        for step in 1..=steps {
            let groups = batch(step);
            let start = Instant::now();
            let out = history.advantages(&config, &groups, None);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            assert_eq!(out.advantages.len(), PROMPTS);
            if checkpoints.contains(&step) {
                row.push(ms);
            }
        }
        println!("{name:<18} {}", row.iter().map(|ms| format!("{ms:>8.2}ms")).collect::<String>());
    }
}
