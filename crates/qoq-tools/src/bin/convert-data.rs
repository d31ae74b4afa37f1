//! Converts CLIMB, QoQ-Med and MIMIC-IV JSONL files into sample shards (data/FORMAT.md).
//!
//!     cargo run --release --bin convert-data -- --format climb|qoq-med|mimic --input FILE.jsonl [--input ...] --out DIR
//!
//! Rows that cannot be converted are listed with their line number and reason; the run
//! fails, writing nothing for that file, when more than --max-bad-fraction of a file's
//! lines are bad.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qoq_data::convert::{convert_jsonl, ConvertOptions, SourceFormat};

#[derive(Parser)]
#[command(about = "Convert CLIMB / QoQ-Med / MIMIC-IV JSONL files into parquet shards")]
struct Args {
    /// climb (per-dataset annotation_*.jsonl), qoq-med (RL file), or mimic (QA file).
    #[arg(long)]
    format: SourceFormat,
    /// JSONL files to convert (repeat the flag for several).
    #[arg(long, required = true)]
    input: Vec<PathBuf>,
    /// Output shard directory.
    #[arg(long)]
    out: PathBuf,
    /// Folder media paths are relative to (default: see data/README.md per format).
    #[arg(long)]
    media_root: Option<PathBuf>,
    /// climb: domain folder when the input path does not show it.
    #[arg(long)]
    domain: Option<String>,
    /// climb: dataset name when the input path does not show it.
    #[arg(long)]
    dataset: Option<String>,
    /// Split for every row (default: from the file name).
    #[arg(long)]
    split: Option<String>,
    /// Frames kept per video / volume folder.
    #[arg(long, default_value_t = 4)]
    frames_per_video: usize,
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
    /// How many bad rows to list per file.
    #[arg(long, default_value_t = 20)]
    show_bad: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let opts = ConvertOptions {
        format: args.format,
        media_root: args.media_root.clone(),
        domain: args.domain.clone(),
        dataset: args.dataset.clone(),
        split: args.split.clone(),
        frames_per_video: args.frames_per_video,
        max_bad_fraction: args.max_bad_fraction,
    };
    let bar = qoq_tools::progress_bar(args.input.len() as u64, "files");
    let (mut rows, mut bad) = (0, 0);
    for input in &args.input {
        bar.set_message(input.display().to_string());
        let report =
            convert_jsonl(input, &args.out, &opts).with_context(|| format!("converting {}", input.display()))?;
        bar.suspend(|| {
            println!(
                "{}: {} rows written, {} bad of {} lines, {} shards",
                input.display(),
                report.rows_written,
                report.bad_count,
                report.lines,
                report.files.len()
            );
            for b in report.bad.iter().take(args.show_bad) {
                println!("  bad: {} line {} (id {:?}): {}", b.file.display(), b.row, b.id, b.reason);
            }
            if report.bad_count as usize > args.show_bad {
                println!("  ... {} more bad rows", report.bad_count as usize - args.show_bad);
            }
        });
        rows += report.rows_written;
        bad += report.bad_count;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("total: {rows} rows written to {}, {bad} bad rows skipped", args.out.display());
    Ok(())
}
