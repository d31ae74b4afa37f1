//! Our AdamW (moments held by us, decay groups, grad-norm clipping) against
//! torch.optim.AdamW + clip_grad_norm_ (tests/fixtures/trainer/adamw.json, made by
//! tools/make_optim_fixture.py).

use qoq_train::optim::{AdamW, OptimConfig};
use serde_json::Value;
use tch::Tensor;

fn tensor(v: &Value) -> Tensor {
    match v.as_array().and_then(|a| a.first()).is_some_and(Value::is_array) {
        true => {
            let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
            let (r, c) = (rows.len() as i64, rows[0].len() as i64);
            Tensor::from_slice(&rows.concat()).view([r, c])
        }
        false => Tensor::from_slice(&serde_json::from_value::<Vec<f32>>(v.clone()).unwrap()),
    }
}

#[test]
fn adamw_matches_torch_step_for_step() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/trainer/adamw.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let matrix = tensor(&f["initial"]["matrix"]).set_requires_grad(true);
    let vector = tensor(&f["initial"]["vector"]).set_requires_grad(true);
    let config = OptimConfig { lr: 0.01, weight_decay: 0.1, grad_clip: 1.0, ..Default::default() };
    // The names put the matrix in the decay group and the vector (a norm weight) outside it.
    let mut opt = AdamW::new(
        config,
        vec![
            ("layer.proj.weight".into(), matrix.shallow_clone()),
            ("layer.norm.weight".into(), vector.shallow_clone()),
        ],
    );
    for (i, step) in f["steps"].as_array().unwrap().iter().enumerate() {
        for (p, g) in [(&matrix, &step["grad"]["matrix"]), (&vector, &step["grad"]["vector"])] {
            let mut grad = p.grad();
            if !grad.defined() {
                // Create the .grad slot with a backward of zero, then fill it.
                (p * 0.0).sum(tch::Kind::Float).backward();
                grad = p.grad();
            }
            tch::no_grad(|| grad.copy_(&tensor(g)));
        }
        let norm = opt.step(0.01);
        assert!((norm - step["grad_norm"].as_f64().unwrap()).abs() < 1e-4 * (1.0 + norm), "step {i}: grad norm {norm}");
        for (name, p, want) in
            [("matrix", &matrix, &step["after"]["matrix"]), ("vector", &vector, &step["after"]["vector"])]
        {
            let diff = (p.detach() - tensor(want)).abs().max().double_value(&[]);
            assert!(diff < 2e-6, "step {i}: {name} differs from torch by {diff}");
        }
    }
}
