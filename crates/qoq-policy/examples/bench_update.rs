//! The update's forward + backward on a random Qwen3-VL (text only, the real 151,936-entry
//! vocabulary), three ways: `plain` (one autograd graph and `[B, T, vocab]` logits, the
//! trainer's computation before chunking), `chunked` (log-probs in chunks of 512 tokens)
//! and `recompute` (chunked, and only each layer's input kept). Prints one JSON line:
//! seconds per update (mean of `--reps` after one warm-up) and the process's peak RSS, so
//! run one mode per process (experiments/update-memory/run.sh does).
//!
//!     cargo run --release -p qoq-policy --example bench_update -- --mode recompute \
//!         --hidden 512 --layers 8 --batch 4 --prompt 64 --response 256 [--bf16]

use std::time::Instant;

use clap::{Parser, ValueEnum};
use qoq_policy::{forward_for_update, Inputs, Policy, Qwen3VL, Qwen3VLConfig, UpdateOptions, DEFAULT_CHUNK_TOKENS};
use tch::{Device, Kind, Tensor};

mod common;
use common::peak_rss_mib;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Plain,
    Chunked,
    Recompute,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    #[arg(long, default_value_t = 8)]
    layers: i64,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    #[arg(long, default_value_t = 64)]
    prompt: i64,
    #[arg(long, default_value_t = 256)]
    response: usize,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long)]
    bf16: bool,
    #[arg(long)]
    threads: Option<i32>,
}

/// The loss: minus the mean log-prob (SFT's), enough to exercise every gradient.
fn loss_of(logp: &Tensor, tokens: f64) -> Tensor {
    -logp.sum(Kind::Float) / tokens
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let mut config = Qwen3VLConfig::tiny();
    let t = &mut config.text_config;
    (t.hidden_size, t.num_hidden_layers, t.intermediate_size) = (args.hidden, args.layers, 3 * args.hidden);
    (t.num_attention_heads, t.num_key_value_heads, t.head_dim) = (args.hidden / 64, (args.hidden / 256).max(1), 64);
    t.mrope_section = [12, 10, 10];
    config.vision_config.out_hidden_size = args.hidden;
    tch::manual_seed(0);
    let mut model = Qwen3VL::new(&config, Device::Cpu)?;
    if args.bf16 {
        model.set_kind(Kind::BFloat16);
    }
    let parameters: i64 = model.var_store().variables().values().map(|t| t.numel() as i64).sum();
    let ids = (Tensor::arange(args.batch * args.prompt, (Kind::Int64, Device::Cpu)) * 7919)
        .remainder(150_000)
        .view([args.batch, args.prompt]);
    let inputs = Inputs { input_ids: Some(&ids), ..Default::default() };
    let responses: Vec<Vec<i64>> =
        (0..args.batch).map(|b| (0..args.response as i64).map(|j| (b * 131 + j * 17) % 150_000).collect()).collect();
    let tokens = (args.batch as usize * args.response) as f64;
    let update = || -> anyhow::Result<()> {
        match args.mode {
            Mode::Plain => {
                let mask = Tensor::ones([args.batch, args.response as i64], (Kind::Int64, Device::Cpu));
                let resp = Tensor::from_slice(&responses.concat()).view([args.batch, args.response as i64]);
                let full_ids = Tensor::cat(&[&ids, &resp], 1);
                let full_mask = Tensor::cat(&[&Tensor::ones_like(&ids), &mask], 1);
                let (hidden, _) = model.forward_hidden(&inputs.with_ids(&full_ids, &full_mask))?;
                let logits =
                    model.logits(&hidden.narrow(1, args.prompt - 1, args.response as i64)).to_kind(Kind::Float);
                let logp_all = logits.log_softmax(-1, Kind::Float);
                let logp = logp_all.gather(2, &resp.unsqueeze(-1), false).squeeze_dim(-1);
                let _entropy = tch::no_grad(|| -(logp_all.exp() * &logp_all).sum_dim_intlist(-1, false, Kind::Float));
                loss_of(&logp, tokens).backward();
            }
            Mode::Chunked | Mode::Recompute => {
                let options = UpdateOptions {
                    chunk_tokens: DEFAULT_CHUNK_TOKENS,
                    recompute: matches!(args.mode, Mode::Recompute),
                };
                let forward = forward_for_update(&model, &inputs, &responses, 1.0, &options)?;
                let logp = forward.logp.detach().set_requires_grad(true);
                loss_of(&logp, tokens).backward();
                forward.backward(&model, &inputs, &logp.grad())?;
            }
        }
        for (_, p) in model.var_store().variables() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        Ok(())
    };
    update()?;
    let start = Instant::now();
    for _ in 0..args.reps {
        update()?;
    }
    let seconds = start.elapsed().as_secs_f64() / args.reps as f64;
    println!(
        "{}",
        serde_json::json!({
            "mode": format!("{:?}", args.mode).to_lowercase(), "dtype": if args.bf16 { "bfloat16" } else { "float32" },
            "parameters": parameters, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
            "prompt": args.prompt, "response": args.response, "seconds_per_update": seconds,
            "peak_rss_mib": peak_rss_mib(), "threads": tch::get_num_threads(),
        })
    );
    Ok(())
}
