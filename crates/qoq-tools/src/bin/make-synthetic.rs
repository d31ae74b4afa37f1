//! Writes a deterministic synthetic set as parquet shards (docs/benchmark.md):
//!
//! - `--kind climb` (default): the CLIMB-like set of the demo, `DIR/synthetic-*.parquet`,
//!   exactly `--samples` rows (domains chest_xray : mammography : dermoscopy : ecg =
//!   10 : 4 : 2 : 1, findings drawn into 512 x 512 images); `--samples` is required;
//! - `--kind ecg`: the CLIMB-like set's ECG rows only (the same rows, ids and splits: 1 in
//!   10 is `val`), `DIR/ecg-*.parquet`, exactly `--samples` rows: the stage-1
//!   demo's set;
//! - `--kind benchmark`: the benchmark where RL has room, `DIR/benchmark-*.parquet`
//!   (chest_xray : dermoscopy : fundus : ecg = 10 : 4 : 2 : 1, text cues in three
//!   difficulty tiers, train / val / test), 6000 rows by default;
//! - `--kind mimic`: a MIMIC-IV-style EHR question-answer set, `DIR/mimic-*.parquet`
//!   (domain `ehr`, open-ended diagnosis lists, train / val / test), 2000 rows by default.
//!
//! Usage:
//!
//!     cargo run --release --bin make-synthetic -- --out DIR --samples N [--seed S]
//!     cargo run --release --bin make-synthetic -- --kind benchmark --out data/benchmark
//!     cargo run --release --bin make-synthetic -- --kind mimic --out data/synthetic-mimic

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use qoq_data::{synthetic, synthetic_benchmark, synthetic_mimic};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// The CLIMB-like set of the demo (images with drawn findings, boxes, masks, ECGs).
    Climb,
    /// The CLIMB-like set's ECG rows only (signal and lead-II plot): stage 1's demo set.
    Ecg,
    /// Skewed domains, text cues in difficulty tiers, a test split for per-domain F1.
    Benchmark,
    /// MIMIC-IV-style EHR records with open-ended diagnosis answers.
    Mimic,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Climb, Kind::Ecg, Kind::Benchmark, Kind::Mimic];

    /// Shard file prefix.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Climb => "synthetic",
            Kind::Ecg => synthetic::ECG_PREFIX,
            Kind::Benchmark => synthetic_benchmark::PREFIX,
            Kind::Mimic => synthetic_mimic::PREFIX,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Climb => "climb",
            Kind::Ecg => "ecg",
            Kind::Benchmark => "benchmark",
            Kind::Mimic => "mimic",
        }
    }

    fn default_samples(self) -> Option<usize> {
        match self {
            Kind::Climb | Kind::Ecg => None,
            Kind::Benchmark => Some(synthetic_benchmark::DEFAULT_SAMPLES),
            Kind::Mimic => Some(synthetic_mimic::DEFAULT_SAMPLES),
        }
    }
}

#[derive(Parser)]
#[command(about = "Write a synthetic set (CLIMB-like, benchmark or MIMIC-style) as parquet shards")]
struct Args {
    /// Output directory (created; must not already hold shards of a synthetic kind).
    #[arg(long)]
    out: PathBuf,
    /// Which set to write.
    #[arg(long, value_enum, default_value = "climb")]
    kind: Kind,
    /// Number of rows to write (required for climb; benchmark 6000 and mimic 2000 by default).
    #[arg(long)]
    samples: Option<usize>,
    /// Seed: the same seed gives byte-identical samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace existing shards of the same kind in --out.
    #[arg(long)]
    force: bool,
}

/// The `<prefix>-*.parquet` files in `dir`.
fn shards_with_prefix(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let start = format!("{prefix}-");
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&start) && name.ends_with(".parquet")
        })
        .collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let samples = match (args.samples, args.kind.default_samples()) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => bail!("--samples is required for --kind {}", args.kind.name()),
    };
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.out.is_dir() {
        // Another kind's shards in the same folder would be read as one set with these.
        for other in Kind::ALL.into_iter().filter(|k| *k != args.kind) {
            let found = shards_with_prefix(&args.out, other.prefix())?;
            if !found.is_empty() {
                bail!(
                    "{} already holds {} {}-*.parquet shards of --kind {}; the loader would read both sets as one, \
                     so choose another --out",
                    args.out.display(),
                    found.len(),
                    other.prefix(),
                    other.name()
                );
            }
        }
        let existing = shards_with_prefix(&args.out, args.kind.prefix())?;
        if !existing.is_empty() {
            if !args.force {
                bail!(
                    "{} already holds {} {} shards; pass --force to replace them, or choose another --out",
                    args.out.display(),
                    existing.len(),
                    args.kind.prefix()
                );
            }
            for p in existing {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    let bar = qoq_tools::progress_bar(samples as u64, "generating");
    let start = std::time::Instant::now();
    let progress = |n: usize| bar.inc(n as u64);
    let files = match args.kind {
        Kind::Climb => synthetic::write_synthetic(&args.out, samples, args.seed, progress),
        Kind::Ecg => synthetic::write_synthetic_ecg(&args.out, samples, args.seed, progress),
        Kind::Benchmark => synthetic_benchmark::write_benchmark(&args.out, samples, args.seed, progress),
        Kind::Mimic => synthetic_mimic::write_mimic(&args.out, samples, args.seed, progress),
    }
    .with_context(|| format!("writing the synthetic {} set into {}", args.kind.name(), args.out.display()))?;
    bar.finish_and_clear();
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    println!(
        "wrote {} {} rows in {} shards ({:.1} MiB) to {} in {:.1} s",
        samples,
        args.kind.name(),
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
