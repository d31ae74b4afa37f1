//! Writes the deterministic synthetic CLIMB-like set: `DIR/synthetic-*.parquet`, exactly
//! `--samples` rows (domains chest_xray : mammography : dermoscopy : ecg = 10 : 4 : 2 : 1).
//!
//!     cargo run --release --bin make-synthetic -- --out DIR --samples N [--seed S]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Write the synthetic CLIMB-like set as parquet shards")]
struct Args {
    /// Output directory (created; must not already hold synthetic-*.parquet shards).
    #[arg(long)]
    out: PathBuf,
    /// Number of rows to write.
    #[arg(long)]
    samples: usize,
    /// Seed: the same seed gives byte-identical samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace existing shards in --out.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if args.out.is_dir() {
        let existing: Vec<PathBuf> = std::fs::read_dir(&args.out)
            .with_context(|| format!("reading {}", args.out.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("synthetic-") && name.ends_with(".parquet")
            })
            .collect();
        if !existing.is_empty() {
            if !args.force {
                bail!(
                    "{} already holds {} synthetic shards; pass --force to replace them, or choose another --out",
                    args.out.display(),
                    existing.len()
                );
            }
            for p in existing {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    let bar = qoq_tools::progress_bar(args.samples as u64, "generating");
    let start = std::time::Instant::now();
    let files = qoq_data::synthetic::write_synthetic(&args.out, args.samples, args.seed, |n| bar.inc(n as u64))
        .with_context(|| format!("writing the synthetic set into {}", args.out.display()))?;
    bar.finish_and_clear();
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    println!(
        "wrote {} rows in {} shards ({:.1} MiB) to {} in {:.1} s",
        args.samples,
        files.len(),
        bytes as f64 / (1 << 20) as f64,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
