//! Score model responses with the QoQ-Med rewards.
//!
//!     cargo run --release --bin score -- --input IN.jsonl --output OUT.jsonl \
//!         [--preset qoq-med|paper|qoq-med3] [--weights f1=0.5,iou=0.3,format=0.1,length=0.1]
//!
//! One output line per input record, in input order: `id`, `f1`, `iou`, `format`,
//! `length`, `jaccard`, `overall`. The output is written to a temporary file and renamed
//! at the end, so a failed run never leaves a partial file or clobbers an older one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qoq_rewards::answer::LabelOptions;
use qoq_rewards::eval::Evaluator;
use qoq_rewards::{IouAggregation, Preset, RewardConfig, Scorer, Weights};
use qoq_tools::scoring::{output_line, score_records, MaskCache, RecordReader};

#[derive(Parser)]
#[command(about = "Score responses (JSONL in, JSONL out) with the QoQ-Med rewards")]
struct Args {
    /// Input JSONL: id, response, answer, and optionally gt_boxes, mask, image_size, domain, dataset.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL (replaced only when the whole input scored).
    #[arg(long)]
    output: PathBuf,
    /// Named weighting: qoq-med (default), paper, qoq-med3.
    #[arg(long)]
    preset: Option<Preset>,
    /// Free weights instead of a preset, e.g. f1=0.6,iou=0.2,format=0.1,length=0.1 (missing = 0).
    #[arg(long, conflicts_with = "preset")]
    weights: Option<Weights>,
    /// How per-box IoUs combine: mean (code, default) or max (paper).
    #[arg(long, value_parser = ["mean", "max"], default_value = "mean")]
    iou_aggregation: String,
    /// Compare labels exactly (case- and whitespace-sensitive), as the original did.
    #[arg(long)]
    exact_labels: bool,
    /// Also read single-quoted / trailing-comma JSON blocks, as the original's literal_eval fallback.
    #[arg(long)]
    lenient_json: bool,
    /// Also write the paper's evaluation metrics (per label, dataset, domain, overall) as JSON.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Records scored per parallel chunk (bounds memory: masks of one chunk are kept).
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = RewardConfig {
        preset: args.preset,
        weights: args.weights,
        iou_aggregation: if args.iou_aggregation == "max" { IouAggregation::Max } else { IouAggregation::Mean },
        normalize_labels: !args.exact_labels,
        lenient_json: args.lenient_json,
    };
    let scorer = Scorer::new(&config)?;
    if args.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    let tmp = qoq_tools::files::temporary_sibling(&args.output)
        .with_context(|| format!("--output {}", args.output.display()))?;
    let result = run(&args, &scorer, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let summary = result?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot move the result to {}", args.output.display()))?;
    eprintln!("{summary}");
    Ok(())
}

/// Score everything into `tmp`; returns the summary to print.
fn run(args: &Args, scorer: &Scorer, tmp: &Path) -> Result<String> {
    let start = Instant::now();
    let mut reader = RecordReader::open(&args.input)?;
    let mut masks = MaskCache::new(&args.input);
    let file = File::create(tmp).with_context(|| format!("cannot write next to {}", args.output.display()))?;
    let mut out = BufWriter::new(file);
    let mut evaluator = Evaluator::new(LabelOptions { normalize: scorer.labels.normalize });
    let total_bytes = std::fs::metadata(&args.input).map(|m| m.len()).unwrap_or(0);
    let bar = qoq_tools::progress_bar(total_bytes, "scoring (bytes)");
    let (mut n, mut sums) = (0usize, [0.0f64; 6]);
    loop {
        let records = reader.next_chunk(args.chunk)?;
        if records.is_empty() {
            break;
        }
        masks.prepare(&records, &args.input)?;
        let scores = score_records(scorer, &records, &masks);
        for (r, s) in records.iter().zip(&scores) {
            writeln!(out, "{}", output_line(&r.id, s))?;
            for (sum, (_, v)) in sums.iter_mut().zip(s.components()) {
                *sum += v;
            }
            sums[5] += s.overall;
            if args.metrics.is_some() {
                let (domain, dataset) = (r.domain.as_deref().unwrap_or("all"), r.dataset.as_deref().unwrap_or("all"));
                evaluator.add(domain, dataset, &r.response, &r.answer, Some(s));
            }
        }
        n += records.len();
        bar.set_position(reader.position());
    }
    bar.finish_and_clear();
    out.flush().with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Some(path) = &args.metrics {
        let report = serde_json::to_string_pretty(&evaluator.report())?;
        std::fs::write(path, report + "\n").with_context(|| format!("cannot write --metrics {}", path.display()))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = |i: usize| if n > 0 { sums[i] / n as f64 } else { 0.0 };
    Ok(format!(
        "scored {n} responses in {seconds:.2} s ({:.0}/s) -> {}\nmean f1 {:.4}  iou {:.4}  format {:.4}  length {:.4}  jaccard {:.4}  overall {:.4}",
        n as f64 / seconds.max(1e-9),
        args.output.display(),
        mean(0),
        mean(1),
        mean(2),
        mean(3),
        mean(4),
        mean(5)
    ))
}
