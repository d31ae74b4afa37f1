//! Rollout throughput of the engine: B prompts of an input file (one image each), G
//! samples each, top-p 0.99 at temperature 1, on a fixed slot budget; prints one JSON
//! line. Run beside transformers' `generate` by experiments/rollout-throughput/run.sh.
//!
//!     cargo run --release -p qoq-policy --example bench_rollout -- --model DIR --inputs IN.safetensors \
//!         --batch B --samples G --new-tokens N --stop mixed|none --slots S [--threads T] [--seed S]
//!
//! `--stop mixed`: responses end at `<|im_end|>` / `<|endoftext|>` (the model's biased
//! end-of-sequence logit spreads their lengths); `none`: every response runs N tokens.
//! `--engine generate` times the reference `generate` (all rows to the longest) instead;
//! `--device cuda --bf16` is the GPU check's form (experiments/gpu/run.sh).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use qoq_policy::{load_policy, EngineConfig, Grid, Inputs, PolicyError, PromptSource, RolloutEngine, SamplingConfig};
use tch::{Device, Tensor};

mod common;
use common::peak_rss_mib;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Stop {
    Mixed,
    None,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Engine {
    Slots,
    Generate,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 5)]
    samples: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, value_enum, default_value_t = Stop::Mixed)]
    stop: Stop,
    #[arg(long, default_value_t = 40)]
    slots: usize,
    /// Prompts per prefill forward.
    #[arg(long, default_value_t = 8)]
    prefill_prompts: usize,
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Engine::Slots)]
    engine: Engine,
    /// `cpu` or `cuda` (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convert the weights to bf16 (the KV arena follows).
    #[arg(long)]
    bf16: bool,
}

/// The input file's prompts: all the same length, one image of the same grid each.
struct FilePrompts {
    ids: Tensor,
    pixels: Tensor,
    grid: Grid,
}

impl FilePrompts {
    fn rows_per_image(&self) -> i64 {
        self.grid[0] * self.grid[1] * self.grid[2]
    }
}

impl PromptSource for FilePrompts {
    fn len(&self) -> usize {
        self.ids.size()[0] as usize
    }
    fn prompt_tokens(&self, _: usize) -> usize {
        self.ids.size()[1] as usize
    }
    fn key(&self, i: usize) -> u64 {
        i as u64
    }
    fn with_batch(
        &self,
        indices: &[usize],
        f: &mut dyn FnMut(&Inputs<'_>) -> Result<(), PolicyError>,
    ) -> Result<(), PolicyError> {
        let rows: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let ids = self.ids.index_select(0, &Tensor::from_slice(&rows).to_device(self.ids.device()));
        let per = self.rows_per_image();
        let pixels: Vec<Tensor> = rows.iter().map(|&r| self.pixels.narrow(0, r * per, per)).collect();
        let pixels = Tensor::cat(&pixels, 0);
        f(&Inputs {
            input_ids: Some(&ids),
            pixel_values: Some(&pixels),
            image_grids: vec![self.grid; rows.len()],
            ..Default::default()
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => anyhow::bail!("--device cuda: this build or machine has no CUDA device (build with --features cuda)"),
        other => anyhow::bail!("--device {other}: expected cpu or cuda"),
    };
    let mut model = load_policy(&args.model, device)?;
    if args.bf16 {
        model.set_kind(tch::Kind::BFloat16);
    }
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(&args.inputs)?.into_iter().collect();
    let grid = Vec::<i64>::try_from(&t["image_grid_thw"].get(0))?;
    let b = args.batch as i64;
    let source = FilePrompts {
        ids: t["input_ids"].narrow(0, 0, b).to_device(device),
        pixels: t["pixel_values"].to_device(device),
        grid: [grid[0], grid[1], grid[2]],
    };
    let source = FilePrompts { pixels: source.pixels.narrow(0, 0, b * source.rows_per_image()), ..source };
    let tokens = model.special_tokens();
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: Some(0.99),
        max_new_tokens: args.new_tokens,
        stop_tokens: if args.stop == Stop::Mixed { tokens.stop.clone() } else { Vec::new() },
        banned_tokens: tokens.banned.clone(),
        samples_per_prompt: args.samples,
        seed: args.seed,
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let start = Instant::now();
    let (rollouts, stats) = match args.engine {
        Engine::Slots => {
            let config = EngineConfig { slots: args.slots, prefill_prompts: args.prefill_prompts };
            RolloutEngine::new(model.as_ref(), config).run(&source, &sampling)?
        }
        Engine::Generate => {
            let all: Vec<usize> = (0..source.len()).collect();
            let mut out = None;
            source.with_batch(&all, &mut |inputs| {
                out = Some(model.generate(inputs, &sampling)?);
                Ok(())
            })?;
            (out.ok_or_else(|| anyhow::anyhow!("no rollouts"))?, Default::default())
        }
    };
    sync();
    let wall = start.elapsed().as_secs_f64();
    let lengths: Vec<usize> = rollouts.tokens.iter().map(Vec::len).collect();
    let generated: usize = lengths.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "side": if args.engine == Engine::Slots { "engine" } else { "generate" },
            "stop": if args.stop == Stop::Mixed { "mixed" } else { "none" },
            "batch": args.batch, "samples": args.samples, "new_tokens": args.new_tokens,
            "responses": lengths.len(), "tokens": generated, "wall_s": wall,
            "tokens_per_s": generated as f64 / wall, "peak_rss_mib": peak_rss_mib(),
            "mean_length": generated as f64 / lengths.len().max(1) as f64,
            "min_length": lengths.iter().min(), "max_length": lengths.iter().max(),
            "slots": stats.slots, "occupancy": stats.occupancy, "decode_steps": stats.decode_steps,
            "prefills": stats.prefills, "arena_mib": stats.arena_bytes as f64 / (1 << 20) as f64,
            "threads": tch::get_num_threads(), "device": args.device, "bf16": args.bf16,
        })
    );
    Ok(())
}
