//! Policy throughput: load, prefill and sampled generation (G samples per prompt) on one
//! checkpoint and input file; prints one JSON line per measurement. Run beside
//! transformers by experiments/policy-throughput/run.sh.
//!
//!     cargo run --release -p qoq-policy --example bench_policy -- --model DIR --inputs IN.safetensors \
//!         --batch B --samples G --new-tokens N [--threads T]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use qoq_policy::Grid;
use qoq_policy::{load_policy, Inputs, SamplingConfig};
use tch::{Device, Tensor};

mod common;
use common::peak_rss_mib;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value_t = 1)]
    batch: i64,
    #[arg(long, default_value_t = 5)]
    samples: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    #[arg(long)]
    threads: Option<i32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let line = |what: &str, seconds: f64, tokens: Option<f64>| {
        println!(
            "{}",
            serde_json::json!({
                "side": "qoq", "what": what, "batch": args.batch, "samples": args.samples,
                "new_tokens": args.new_tokens, "seconds": seconds,
                "tokens_per_s": tokens.map(|t| t / seconds), "peak_rss_mib": peak_rss_mib(), "threads": threads,
            })
        )
    };

    let start = Instant::now();
    let model = load_policy(&args.model, Device::Cpu)?;
    line("load", start.elapsed().as_secs_f64(), None);

    let t: HashMap<String, Tensor> = Tensor::read_safetensors(&args.inputs)?.into_iter().collect();
    let b = args.batch;
    let ids = t["input_ids"].narrow(0, 0, b);
    let mask = t["attention_mask"].narrow(0, 0, b);
    let grids: Vec<Grid> = Vec::<Vec<i64>>::try_from(&t["image_grid_thw"])?
        .into_iter()
        .take(b as usize)
        .map(|g| [g[0], g[1], g[2]])
        .collect();
    let rows: i64 = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
    let pixels = t["pixel_values"].narrow(0, 0, rows);
    let inputs = Inputs {
        input_ids: Some(&ids),
        attention_mask: Some(&mask),
        pixel_values: Some(&pixels),
        image_grids: grids,
        ..Default::default()
    };
    let prompt_tokens = (b * ids.size()[1]) as f64;
    let _guard = tch::no_grad_guard();
    // Warm-up (allocator, kernels), then the timed prefill: a full forward with all logits.
    let _ = model.prefill(&inputs)?;
    let start = Instant::now();
    let _ = model.prefill(&inputs)?;
    let prefill_s = start.elapsed().as_secs_f64();
    line("prefill", prefill_s, Some(prompt_tokens));

    let config = SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        max_new_tokens: args.new_tokens,
        stop_tokens: vec![],
        banned_tokens: model.special_tokens().banned.clone(),
        samples_per_prompt: args.samples,
        seed: 0,
    };
    // What generate does before its first sample: the prompt forward, last-position logits.
    let start = Instant::now();
    let (hidden, _) = model.forward_hidden(&inputs)?;
    let _ = model.logits(&hidden.select(1, -1));
    let first_token_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let out = model.generate(&inputs, &config)?;
    let total = start.elapsed().as_secs_f64();
    let generated: usize = out.tokens.iter().map(Vec::len).sum();
    assert_eq!(generated, b as usize * args.samples * args.new_tokens);
    line("generate", total, Some(generated as f64));
    // Decode alone: the tokens after the first, over the time after the prompt forward.
    let decode = (b as usize * args.samples * (args.new_tokens - 1)) as f64;
    line("decode", total - first_token_s, Some(decode));
    Ok(())
}
