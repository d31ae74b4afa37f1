//! Pretrain a small ECG-JEPA-shaped encoder on synthetic ECGs, as a stand-in for ECG-JEPA's
//! released checkpoint in the stage-1 demo (which cannot download one).
//!
//!     cargo run --release --bin pretrain-ecg-encoder -- --out data/tiny-ecg-encoder.safetensors \
//!         [--sizes 64,2,256] [--steps 400] [--seed 0]
//!
//! Why: stage 1 aligns an encoder that already reads ECGs with an LLM that does not. A
//! randomly initialised encoder's pooled output barely varies between ECGs (1.5% of its
//! norm at demo size; a ridge linear probe reads the rhythm at 0.42 held-out accuracy at best,
//! chance 0.25), so a demo with one shows alignment of nothing. This tool gives the demo an encoder
//! that carries the rhythm, the way a pretrained ECG-JEPA does on real ECGs.
//!
//! How: the encoder (ECG-JEPA's architecture, its random start) and a linear head over the
//! four rhythm labels are trained with cross-entropy (AdamW) on ECGs drawn by the synthetic
//! generator with data seed `1000 + seed`; the demo's set uses data seed 0, so no demo ECG
//! is seen. This is supervised pretraining, not ECG-JEPA's self-supervised objective (what
//! matters downstream, an embedding from which the rhythm is linearly readable, is the same).
//! The head is discarded. The output holds the encoder's tensors under QoQ-Med's names
//! (`time_series_embedding.encoder.*`), which `model.ecg_encoder = "PATH"` reads; a JSON
//! summary (sizes, steps, held-out accuracy) is written beside it (`PATH.json`).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use qoq_data::preprocess::preprocess_ecg;
use qoq_policy::{EcgConfig, EcgEncoderConfig, TimeSeriesEmbedding};
use qoq_tools::files::{temporary_sibling, write_atomic};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// The synthetic ECG rows' labels, the head's classes in this order.
const RHYTHMS: [&str; 4] = qoq_data::synthetic::ECG_LABELS;

#[derive(Parser)]
struct Args {
    /// The encoder's weights (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// embed_dim, depth, mlp_dim (ECG-JEPA's: 768,12,3072). The head count is ECG-JEPA's 16:
    /// its checkpoint layout records none, so a loaded encoder always has 16.
    #[arg(long, value_delimiter = ',', default_values_t = [64i64, 2, 256])]
    sizes: Vec<i64>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 400)]
    steps: i64,
    /// ECGs per step.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// ECGs to train on, and held out to measure on.
    #[arg(long, default_value_t = 800)]
    train: usize,
    #[arg(long, default_value_t = 200)]
    held_out: usize,
    /// Seeds the weights, the batches and (as 1000 + seed) the ECG draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Intra-op threads (libtorch's default when absent).
    #[arg(long)]
    threads: Option<i32>,
}

/// ECGs `first..first + n` of the synthetic generator (data seed `seed`) preprocessed as the
/// trainer does, [n, 8, 2500], and their rhythm classes [n].
fn draw(seed: u64, first: usize, n: usize) -> Result<(Tensor, Tensor)> {
    let (mut values, mut classes) = (Vec::with_capacity(n * 8 * 2500), Vec::with_capacity(n));
    for k in first..first + n {
        let sample = qoq_data::synthetic::generate_ecg(seed, k);
        let signal = sample.ecg.as_ref().with_context(|| format!("synthetic ECG {k} has no signal"))?;
        values.extend(preprocess_ecg(signal).map_err(|e| anyhow::anyhow!("synthetic ECG {k}: {e}"))?);
        let class = RHYTHMS.iter().position(|r| *r == sample.answer);
        classes.push(class.with_context(|| format!("synthetic ECG {k}: unknown rhythm `{}`", sample.answer))? as i64);
    }
    Ok((Tensor::from_slice(&values).view([n as i64, 8, 2500]), Tensor::from_slice(&classes)))
}

/// Fraction of `signals` whose head prediction equals `classes`.
fn accuracy(ts: &TimeSeriesEmbedding, head: &nn::Linear, signals: &Tensor, classes: &Tensor) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let mut hits = 0i64;
    for (x, y) in signals.split(8, 0).iter().zip(classes.split(8, 0).iter()) {
        let predicted = head.forward(&ts.encoder().representation(x)?).argmax(1, false);
        hits += predicted.eq_tensor(y).sum(Kind::Int64).int64_value(&[]);
    }
    Ok(hits as f64 / classes.size()[0] as f64)
}

fn main() -> Result<()> {
    // The attention scores ([batch, 16, 400, 400] f32, 82 MB at batch 8) recur every step:
    // kept in the heap, not mapped and faulted in afresh (which took half the wall time).
    qoq_tools::ranks::keep_freed_memory_below(1 << 30);
    let args = Args::parse();
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    ensure!(args.steps > 0 && args.batch > 0, "--steps and --batch must be positive");
    ensure!(args.train > 0 && args.held_out > 0, "--train and --held-out must be positive");
    let [embed_dim, depth, mlp_dim] = args.sizes[..] else {
        anyhow::bail!("--sizes takes 3 numbers (embed_dim,depth,mlp_dim), not {:?}", args.sizes)
    };
    let encoder = EcgEncoderConfig { embed_dim, depth, mlp_dim, ..Default::default() };
    encoder.validate().map_err(|e| anyhow::anyhow!("--sizes: {e}"))?;

    let data_seed = 1000 + args.seed;
    let (train_x, train_y) = draw(data_seed, 0, args.train)?;
    let (held_x, held_y) = draw(data_seed, args.train, args.held_out)?;

    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    // The projection's width does not matter here: only the encoder is kept.
    let ts = TimeSeriesEmbedding::new(&vs.root(), &EcgConfig { token_id: 0, encoder }, 1);
    let head = nn::linear(vs.root() / "head", embed_dim, RHYTHMS.len() as i64, Default::default());
    let mut opt = nn::AdamW::default().build(&vs, args.lr)?;
    let before = accuracy(&ts, &head, &held_x, &held_y)?;
    println!("held-out accuracy before: {before:.3} ({} ECGs, chance {:.2})", args.held_out, 1.0 / 4.0);
    let bar = qoq_tools::progress_bar(args.steps as u64, "pretraining");
    let mut loss_value = f64::NAN;
    for _ in 0..args.steps {
        let idx = Tensor::randint(args.train as i64, [args.batch], (Kind::Int64, Device::Cpu));
        let logits = head.forward(&ts.encoder().representation(&train_x.index_select(0, &idx))?);
        let loss = logits.cross_entropy_for_logits(&train_y.index_select(0, &idx));
        opt.backward_step(&loss);
        loss_value = loss.double_value(&[]);
        bar.set_message(format!("loss {loss_value:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let after = accuracy(&ts, &head, &held_x, &held_y)?;
    println!("held-out accuracy after {} steps: {after:.3} (last loss {loss_value:.3})", args.steps);

    let variables = vs.variables();
    let mut encoder_tensors: Vec<(String, Tensor)> =
        variables.into_iter().filter(|(name, _)| name.starts_with("time_series_embedding.encoder.")).collect();
    encoder_tensors.sort_by(|a, b| a.0.cmp(&b.0));
    write_weights(&args.out, &encoder_tensors)?;
    let summary = serde_json::json!({
        "what": "an ECG-JEPA-shaped encoder pretrained with supervision on synthetic ECG rhythms (pretrain-ecg-encoder)",
        "sizes": { "embed_dim": embed_dim, "depth": depth, "num_heads": encoder.num_heads, "mlp_dim": mlp_dim },
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "data_seed": data_seed,
        "train_ecgs": args.train, "held_out_ecgs": args.held_out,
        "held_out_accuracy_before": before, "held_out_accuracy": after, "last_loss": loss_value,
        "labels": RHYTHMS,
    });
    let summary_path = PathBuf::from(format!("{}.json", args.out.display()));
    write_atomic(&summary_path, format!("{summary:#}\n").as_bytes())?;
    println!("wrote {} ({} tensors) and {}", args.out.display(), encoder_tensors.len(), summary_path.display());
    Ok(())
}

/// `tensors` to `path` as safetensors, through a temporary sibling.
fn write_weights(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = temporary_sibling(path)?;
    Tensor::write_safetensors(tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
