//! How much of the synthetic ECG's rhythm an ECG encoder's pooled embedding carries: a ridge
//! linear probe (one-hot targets over the 4 rhythms, standardised features) fitted on the
//! first half of `--n` synthetic ECGs and scored on the second half.
//!
//!     cargo run --release -p qoq-policy --example ecg_probe -- [--n 1000] [--ridge 1] \
//!         [--encoder data/tiny-ecg-encoder.safetensors]
//!
//! Without `--encoder`, the encoder is ECG-JEPA's random start at the demo's sizes
//! (`--width 64 --depth 2 --mlp 256`, 16 heads), seeded by `--seed`. It also prints the
//! spread of the embeddings across ECGs against their common part, which is what the LLM
//! behind the projection has to tell ECGs apart by.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qoq_data::preprocess::preprocess_ecg;
use qoq_policy::{EcgConfig, EcgEncoderConfig, TimeSeriesEmbedding};
use tch::{nn, Device, Kind, Tensor};

const RHYTHMS: [&str; 4] = qoq_data::synthetic::ECG_LABELS;

#[derive(Parser)]
struct Args {
    /// Synthetic ECGs (data seed `--data-seed`), half to fit, half to score.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Ridge penalty on the standardised features.
    #[arg(long, default_value_t = 1.0)]
    ridge: f64,
    /// Encoder weights (`pretrain-ecg-encoder`'s output); its shapes set the sizes.
    #[arg(long)]
    encoder: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    width: i64,
    #[arg(long, default_value_t = 2)]
    depth: i64,
    #[arg(long, default_value_t = 256)]
    mlp: i64,
    /// Seeds the random encoder.
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let (mut values, mut classes) = (Vec::new(), Vec::new());
    for k in 0..a.n {
        let s = qoq_data::synthetic::generate_ecg(a.data_seed, k);
        let signal = s.ecg.as_ref().context("an ECG row without its signal")?;
        values.extend(preprocess_ecg(signal).map_err(anyhow::Error::msg)?);
        classes.push(RHYTHMS.iter().position(|r| *r == s.answer).context("unknown rhythm")? as i64);
    }
    let n = a.n as i64;
    let signals = Tensor::from_slice(&values).view([n, 8, 2500]);

    let encoder = match &a.encoder {
        Some(p) => qoq_policy::ecg::encoder_sizes(p)?.context("--encoder takes a .safetensors file")?,
        None => EcgEncoderConfig { embed_dim: a.width, depth: a.depth, mlp_dim: a.mlp, ..Default::default() },
    };
    tch::manual_seed(a.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let ts = TimeSeriesEmbedding::new(&vs.root(), &EcgConfig { token_id: 0, encoder }, 1);
    if let Some(p) = &a.encoder {
        qoq_policy::ecg::load_jepa_checkpoint(&vs.variables(), p)?;
    }
    let features = tch::no_grad(|| -> anyhow::Result<Tensor> {
        let parts =
            signals.split(8, 0).iter().map(|c| ts.encoder().representation(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&parts, 0).to_kind(Kind::Double))
    })?;

    let mean = features.mean_dim(0, true, Kind::Double);
    let spread = (&features - &mean).square().mean(Kind::Double).sqrt().double_value(&[]);
    let common = mean.square().mean(Kind::Double).sqrt().double_value(&[]);
    println!(
        "embedding rms: common part {common:.4}, spread across ECGs {spread:.4} ({:.1}%)",
        100.0 * spread / common
    );

    let opts = (Kind::Double, Device::Cpu);
    let z = (&features - &mean) / (features.std_dim(0, true, true) + 1e-12);
    let z = Tensor::cat(&[z, Tensor::ones([n, 1], opts)], 1);
    let y = Tensor::from_slice(&classes);
    let half = n / 2;
    let (fit, score) = (z.narrow(0, 0, half), z.narrow(0, half, n - half));
    let d = fit.size()[1];
    let target = y.narrow(0, 0, half).one_hot(RHYTHMS.len() as i64).to_kind(Kind::Double);
    let w = (fit.tr().matmul(&fit) + Tensor::eye(d, opts) * a.ridge).inverse().matmul(&fit.tr().matmul(&target));
    for (name, x, y) in [("fit", &fit, y.narrow(0, 0, half)), ("held-out", &score, y.narrow(0, half, n - half))] {
        let hits = x.matmul(&w).argmax(1, false).eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double);
        println!("{name} accuracy {:.3} ({} ECGs; chance 0.25)", hits.double_value(&[]), y.size()[0]);
    }
    Ok(())
}
