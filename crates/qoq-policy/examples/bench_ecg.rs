//! ECG path cost: time and memory of one `time_series_embedding` forward (ECG-JEPA's
//! encoder at full size, 768 wide, 12 blocks, 16 heads, 400 tokens, then the projection
//! 768 -> hidden) per batch of ECGs, on CPU. Run beside PyTorch by
//! experiments/ecg-encoder/run.sh (whose bench.py writes the shared weights and input).
//!
//!     cargo run --release -p qoq-policy --example bench_ecg -- [--weights W.safetensors] \
//!         [--inputs IN.safetensors] [--batch 1,8] [--hidden 4096] [--threads T] [--iters 3] \
//!         [--warmup 1] [--bf16] [--grad] [--json OUT]
//!
//! Per batch size B (ascending, in one process): the median wall time of `--iters` forwards
//! (after `--warmup` untimed ones) of B ECGs [B, 8, 2500]; with `--grad` each iteration is a
//! forward, `sum()` and backward through the projection and the whole encoder (all
//! parameters trainable; gradients zeroed between iterations, outside the timing) instead
//! of a no-grad forward. Memory: VmRSS after building (and loading) the model, then, per
//! batch size, the peak (VmHWM) while its forwards run; the kernel's high-water mark is
//! reset (`/proc/self/clear_refs` = 5) before each batch size so that neither the weight
//! load's transient copy nor a previous batch size counts. `growth` = peak - RSS after
//! building. With `--inputs` (bench.py's `signals` [8, 8, 2500] and PyTorch's `embeddings`
//! [8, hidden] for them) the max |difference| of our embeddings from PyTorch's is reported.
//! One JSON line per batch size on stdout; `--json OUT` writes the whole run as one object.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use qoq_policy::{EcgConfig, EcgEncoderConfig, TimeSeriesEmbedding};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::peak_rss_mib;

#[derive(Parser)]
struct Args {
    /// Weights with QoQ-Med's names (`time_series_embedding.{encoder, linear}.*`, f32); a
    /// random ECG-JEPA start when absent.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// `signals` [n, 8, 2500] f32 and optionally `embeddings` [n, hidden] (PyTorch's); a
    /// seeded random input when absent.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Batch sizes (ECGs per forward), a list (`1,8`) or repeated; run in ascending order.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [1i64, 8])]
    batch: Vec<i64>,
    /// Text width of the projection: 4096 (Qwen3-VL-8B) or 3584 (Qwen2.5-VL-7B).
    #[arg(long, default_value_t = 4096)]
    hidden: i64,
    /// Intra-op threads (libtorch's default when absent).
    #[arg(long)]
    threads: Option<i32>,
    /// Timed iterations per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Untimed iterations before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Weights and input in bfloat16 (the difference is then against PyTorch's f32).
    #[arg(long)]
    bf16: bool,
    /// Forward + backward (training with the encoder unfrozen) instead of a no-grad forward.
    #[arg(long)]
    grad: bool,
    /// Writes the run as one JSON object here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// VmRSS of this process in MiB; 0 where /proc is missing.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; false where refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Copies `path`'s tensors into the store's variables by name; every variable must be
/// present with its shape.
fn load_weights(vs: &nn::VarStore, path: &PathBuf) -> anyhow::Result<usize> {
    let file: HashMap<String, Tensor> =
        Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?.into_iter().collect();
    let vars = vs.variables();
    for (name, var) in &vars {
        let Some(t) = file.get(name) else { bail!("{}: no tensor `{name}`", path.display()) };
        if t.size() != var.size() {
            bail!("{}: `{name}` has shape {:?}, the model's is {:?}", path.display(), t.size(), var.size());
        }
        tch::no_grad(|| var.shallow_clone().copy_(t));
    }
    Ok(vars.len())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let mut batches = args.batch.clone();
    batches.sort_unstable();
    batches.dedup();
    let max_batch = *batches.last().context("--batch: no sizes")?;

    let rss_start = rss_mib();
    let start = Instant::now();
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = EcgConfig { token_id: 0, encoder: EcgEncoderConfig::default() };
    let ts = TimeSeriesEmbedding::new(&vs.root(), &config, args.hidden);
    let tensors = match &args.weights {
        Some(path) => load_weights(&vs, path)?,
        None => vs.variables().len(),
    };
    if args.bf16 {
        vs.bfloat16();
    }
    let build_s = start.elapsed().as_secs_f64();
    let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();

    let (signals, reference) = match &args.inputs {
        Some(path) => {
            let mut t: HashMap<String, Tensor> = Tensor::read_safetensors(path)
                .with_context(|| format!("reading {}", path.display()))?
                .into_iter()
                .collect();
            let signals = t.remove("signals").with_context(|| format!("{}: no `signals`", path.display()))?;
            (signals, t.remove("embeddings"))
        }
        None => {
            tch::manual_seed(1);
            (Tensor::randn([max_batch, 8, 2500], (Kind::Float, Device::Cpu)), None)
        }
    };
    if signals.size()[0] < max_batch {
        bail!("the input holds {} ECGs, --batch asks for {max_batch}", signals.size()[0]);
    }
    let kind = if args.bf16 { Kind::BFloat16 } else { Kind::Float };
    // The model and its input are ready: what the forwards add is measured from here.
    let rss_model = rss_mib();
    let load_peak = peak_rss_mib();

    let mut rows = Vec::new();
    for &b in &batches {
        let x = signals.narrow(0, 0, b).to_kind(kind).contiguous();
        let rss_before = rss_mib();
        let reset = reset_peak();
        let mut times = Vec::with_capacity(args.iters);
        let mut last = None;
        for i in 0..args.warmup + args.iters {
            let t0 = Instant::now();
            let out = if args.grad {
                let out = ts.forward(&x)?;
                out.sum(Kind::Float).backward();
                out.detach()
            } else {
                tch::no_grad(|| ts.forward(&x))?
            };
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            if args.grad {
                for mut v in vs.trainable_variables() {
                    v.zero_grad();
                }
            }
            if i >= args.warmup {
                times.push(dt);
            }
            last = Some(out);
        }
        let peak = peak_rss_mib();
        let out = last.context("--warmup + --iters is 0")?;
        let diff = reference
            .as_ref()
            .map(|r| (out.to_kind(Kind::Float) - r.narrow(0, 0, b).to_kind(Kind::Float)).abs().max().double_value(&[]));
        let ms = median(&times);
        let row = json!({
            "side": "rust", "batch": b, "threads": threads, "hidden": args.hidden, "bf16": args.bf16,
            "grad": args.grad, "ms": ms, "ms_per_ecg": ms / b as f64, "ms_all": times,
            "rss_model_mib": rss_model, "rss_before_mib": rss_before, "peak_rss_mib": peak,
            "growth_mib": peak - rss_model, "peak_reset": reset, "max_abs_diff": diff,
            "out_abs_max": out.abs().max().to_kind(Kind::Float).double_value(&[]),
        });
        println!("{row}");
        rows.push(row);
    }

    if let Some(path) = &args.json {
        let mut meta = BTreeMap::new();
        meta.insert("side", json!("rust"));
        meta.insert("threads", json!(threads));
        meta.insert("hidden", json!(args.hidden));
        meta.insert("bf16", json!(args.bf16));
        meta.insert("grad", json!(args.grad));
        meta.insert("iters", json!(args.iters));
        meta.insert("warmup", json!(args.warmup));
        meta.insert("tensors", json!(tensors));
        meta.insert("parameters", json!(params));
        meta.insert("build_s", json!(build_s));
        meta.insert("rss_start_mib", json!(rss_start));
        meta.insert("rss_model_mib", json!(rss_model));
        meta.insert("load_peak_rss_mib", json!(load_peak));
        meta.insert("weights", json!(args.weights.as_ref().map(|p| p.display().to_string())));
        meta.insert("results", json!(rows));
        std::fs::write(path, serde_json::to_string_pretty(&meta)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
