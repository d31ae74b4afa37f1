//! Stage 1 end to end on a tiny model: `model.ecg_encoder = "random"` gives the policy an
//! ECG path, which trains on the synthetic ECG rows (encoder frozen, projection and LLM
//! training), checkpoints and resumes exactly, trains on 2 ranks with full sharding as one
//! process does, and exports to a folder that loads with its ECG path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{inputs_toml, repo, weights};
use qoq_policy::{load_policy, EcgEncoderConfig, EcgInit, Qwen3VL, Qwen3VLConfig};
use tch::Tensor;

const SIZES: &str = "{ embed_dim = 16, depth = 1, num_heads = 4, mlp_dim = 32 }";

fn config_text(out: &Path, model: &Path, shards: &Path, extra: &str) -> String {
    format!(
        r#"
[run]
output_dir = "{out}"
seed = 5
threads = 1
save_every = 1
keep_checkpoints = 0
image_summary_every = 0

{inputs}

[sft]
steps = 2
batch_size = 2
micro_batch = 2
[sft.optim]
lr = 1e-4

[rl]
steps = 2
prompts_per_step = 2
samples_per_prompt = 2
prompts_per_update = 2
micro_batch = 2
generation_batch = 1
max_new_tokens = 6
top_p = 1.0
[rl.optim]
lr = 1e-4

[algorithm]
kl_coef = 0.01

[distributed]
timeout_s = 30
{extra}
"#,
        out = out.display(),
        // The ECG path in [model] (the table before [data]); ECG rows only in [data].
        inputs = inputs_toml(model, shards)
            .replace(
                "[data]",
                &format!("ecg_encoder = \"random\"\necg_encoder_sizes = {SIZES}\nfreeze = [\"ecg_encoder\"]\n\n[data]")
            )
            .replace(
                "[processor]",
                "domain_weights = { chest_xray = 0.0, mammography = 0.0, dermoscopy = 0.0, ecg = 1.0 }\n\n[processor]"
            ),
    )
}

fn train(config: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_train")).arg(config).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn tensor<'a>(all: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
}

#[test]
fn stage_one_trains_the_projection_on_ecg_rows_resumes_shards_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tch::manual_seed(0);
    Qwen3VL::new(&Qwen3VLConfig::tiny(), tch::Device::Cpu).unwrap().save_pretrained(&model, u64::MAX).unwrap();
    std::fs::copy(repo().join(".qwen-tokenizer/tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let shards = tmp.path().join("shards");
    // 10 ECG rows in 170 (the 10:4:2:1 cycle).
    qoq_data::synthetic::write_synthetic(&shards, 170, 0, |_| {}).unwrap();
    let write = |name: &str, extra: &str| -> (PathBuf, PathBuf) {
        let out = tmp.path().join(name);
        let cfg = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, config_text(&out, &model, &shards, extra)).unwrap();
        (cfg, out)
    };

    let (cfg_a, out_a) = write("a", "");
    train(&cfg_a, &[]);
    let rollouts = std::fs::read_to_string(out_a.join("rollouts/step_3.jsonl")).unwrap();
    for line in rollouts.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["domain"], "ecg", "stage 1 sees ECG rows only");
    }
    let end = weights(&out_a.join("checkpoints/step_4/model"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join("checkpoints/step_4/model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["time_series_token_id"], 151_669);
    // The start the run was given: the same init, the same seed.
    let mut start = load_policy(&model, tch::Device::Cpu).unwrap();
    let sizes: EcgEncoderConfig =
        toml::from_str(&format!("s = {SIZES}")).map(|t: toml::Table| t["s"].clone().try_into().unwrap()).unwrap();
    start.add_ecg(&EcgInit::Random { seed: 5 }, Some(sizes)).unwrap();
    let start_vars = start.var_store().variables();
    for name in ["time_series_embedding.encoder.W_P.weight", "time_series_embedding.encoder.pos_embed"] {
        assert!(tensor(&end, name).equal(&start_vars[name]), "{name}: the frozen encoder moved");
    }
    let proj = "time_series_embedding.linear.weight";
    let moved = (tensor(&end, proj) - &start_vars[proj]).abs().max().double_value(&[]);
    assert!(moved > 1e-6, "the projection did not train");

    // Resumed from step 2: the same step 4.
    let (cfg_b, out_b) = write("b", "");
    std::fs::create_dir_all(out_b.join("checkpoints")).unwrap();
    copy_tree(&out_a.join("checkpoints/step_2"), &out_b.join("checkpoints/step_2"));
    train(&cfg_b, &["--resume"]);
    for ((na, ta), (nb, tb)) in end.iter().zip(&weights(&out_b.join("checkpoints/step_4/model"))) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resuming");
    }

    // 2 ranks, parameters fully sharded: one process's weights, ECG path included.
    let (cfg_c, out_c) = write("c", "sharding = \"full\"");
    train(&cfg_c, &["--nproc", "2"]);
    let ranks = weights(&out_c.join("checkpoints/step_4/model"));
    assert_eq!(ranks.len(), end.len());
    for ((na, ta), (_, tc)) in end.iter().zip(&ranks) {
        let d = (ta - tc).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{na}: 2 ranks with full sharding differ from one process by {d:e}");
    }

    // Exported, the folder carries the ECG path.
    let hf = tmp.path().join("hf");
    let o = Command::new(env!("CARGO_BIN_EXE_export"))
        .args(["--checkpoint", out_a.join("checkpoints/step_4").to_str().unwrap(), "--out", hf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exported = load_policy(&hf, tch::Device::Cpu).unwrap();
    assert_eq!(exported.ecg().map(|t| t.token_id()), Some(151_669));
    assert!(exported.var_store().variables()[proj].equal(tensor(&end, proj)));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}
