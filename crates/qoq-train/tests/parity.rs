//! The loss and the advantages against QoQ-Med's original training code, on fixtures made
//! by tools/make_trainer_fixtures.py (tests/fixtures/trainer/README.md).

use qoq_train::advantage::{AdvantageConfig, DrpoHistory, Estimator, Group};
use qoq_train::loss::{batch_normaliser, policy_loss, Aggregation, LossConfig};
use serde_json::Value;
use tch::{Kind, Tensor};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/trainer").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let (b, t) = (rows.len() as i64, rows[0].len() as i64);
    Tensor::from_slice(&rows.concat()).view([b, t])
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn policy_loss_matches_the_original() {
    let cases = fixture("policy_loss.json");
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let f = |k: &str| case[k].as_f64().unwrap();
        let config = LossConfig {
            clip_low: f("clip_low"),
            clip_high: f("clip_high"),
            dual_clip: Some(f("dual_clip")),
            kl_coef: f("kl_coef"),
            aggregation: Aggregation::TokenMean,
        };
        let logp = matrix(&case["new_logp"]).set_requires_grad(true);
        let old = matrix(&case["old_logp"]);
        let reference = matrix(&case["ref_logp"]);
        let mask = matrix(&case["mask"]);
        let adv: Vec<f64> = serde_json::from_value(case["advantages"].clone()).unwrap();
        let adv = Tensor::from_slice(&adv);
        let lengths: Vec<usize> = Vec::<f64>::try_from(mask.sum_dim_intlist(1, false, Kind::Double))
            .unwrap()
            .iter()
            .map(|&l| l as usize)
            .collect();
        // The original divides by (tokens + 1e-8); ours by the token count.
        let normaliser = batch_normaliser(Aggregation::TokenMean, &lengths) + 1e-8;
        let terms = policy_loss(&logp, &old, Some(&reference), &adv, &mask, &config, normaliser);
        let e = &case["expected"];
        let tol = 1e-9;
        for (what, ours, theirs) in [
            ("pg_loss", terms.pg_loss, e["pg_loss"].as_f64().unwrap()),
            ("pg_clipfrac_higher", terms.pg_clipfrac_higher, e["pg_clipfrac_higher"].as_f64().unwrap()),
            ("pg_clipfrac_lower", terms.pg_clipfrac_lower, e["pg_clipfrac_lower"].as_f64().unwrap()),
            ("ppo_kl", terms.ppo_kl, e["ppo_kl"].as_f64().unwrap()),
            ("loss", terms.loss.double_value(&[]), e["loss"].as_f64().unwrap()),
        ] {
            assert!(close(ours, theirs, tol), "{name}: {what} {ours} vs original {theirs}");
        }
        if config.kl_coef != 0.0 {
            let theirs = e["kl_loss"].as_f64().unwrap();
            assert!(close(terms.kl_loss, theirs, tol), "{name}: kl_loss {} vs original {theirs}", terms.kl_loss);
        }
        terms.loss.backward();
        let grad = Vec::<f64>::try_from(logp.grad().view([-1])).unwrap();
        let expected = Vec::<f64>::try_from(matrix(&e["grad_new_logp"]).view([-1])).unwrap();
        for (i, (g, x)) in grad.iter().zip(&expected).enumerate() {
            assert!(close(*g, *x, tol), "{name}: d loss / d logp[{i}] = {g} vs original {x}");
        }
    }
}

#[test]
fn advantages_match_the_original() {
    let cases = fixture("advantages.json");
    let mut compared = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let estimator = match case["estimator"].as_str().unwrap() {
            "grpo" => Estimator::Grpo,
            _ => Estimator::Drpo,
        };
        // The original's settings: rollout order kept, whole history, inverse-size mu_d.
        let config = AdvantageConfig { estimator, sort_group_rewards: false, ..Default::default() };
        let mut history = DrpoHistory::default();
        for (s, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let rewards: Vec<f64> = serde_json::from_value(step["rewards"].clone()).unwrap();
            let uids: Vec<String> = serde_json::from_value(step["uid"].clone()).unwrap();
            let domains: Vec<String> = serde_json::from_value(step["domain"].clone()).unwrap();
            // Group consecutive responses of one uid, in first-appearance order.
            let mut order: Vec<String> = Vec::new();
            for u in &uids {
                if !order.contains(u) {
                    order.push(u.clone());
                }
            }
            let groups: Vec<Group> = order
                .iter()
                .map(|u| {
                    let idx: Vec<usize> = (0..uids.len()).filter(|&i| &uids[i] == u).collect();
                    Group { domain: domains[idx[0]].clone(), rewards: idx.iter().map(|&i| rewards[i]).collect() }
                })
                .collect();
            let out = history.advantages(&config, &groups, None);
            let ours: Vec<(String, f64)> =
                order.iter().zip(&out.advantages).flat_map(|(u, a)| a.iter().map(move |v| (u.clone(), *v))).collect();
            if step["original_nonfinite"].as_bool().unwrap() {
                // Where the original divides 0 by 0 (a cluster of all-zero rewards) ours stays finite.
                assert!(out.advantages.iter().flatten().all(|a| a.is_finite()), "{name} step {s}: not finite");
                continue;
            }
            if let Some(k) = step.get("debug").and_then(|d| d.get("k_per_domain")).and_then(Value::as_object) {
                for (domain, k) in k {
                    assert_eq!(
                        out.domains[domain].clusters as u64,
                        k.as_u64().unwrap(),
                        "{name} step {s}: k of {domain}"
                    );
                }
            }
            let expected: Vec<f64> = serde_json::from_value(step["expected"].clone()).unwrap();
            for (i, e) in expected.iter().enumerate() {
                let u = &uids[i];
                let nth = uids[..i].iter().filter(|x| *x == u).count();
                let v = ours.iter().filter(|(x, _)| x == u).nth(nth).unwrap().1;
                // The original computes in float32.
                assert!((v - e).abs() < 2e-5 * (1.0 + e.abs()), "{name} step {s} response {i}: {v} vs original {e}");
                compared += 1;
            }
        }
    }
    assert!(compared > 200, "only {compared} values compared");
}
