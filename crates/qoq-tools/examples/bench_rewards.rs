//! Reward throughput over a `score` input file, the work the trainer's reward step does.
//! Records and masks are loaded first (a trainer holds them in memory); then only the
//! scoring is timed, `--repeat` times. Prints one JSON line. Benchmarks live here, not in
//! the tests; experiments/reward-throughput/run.sh runs it beside the original Python.
//!
//!     cargo run --release --example bench_rewards -- IN.jsonl [--threads T] [--repeat K]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use qoq_rewards::{Preset, RewardConfig, Scorer};
use qoq_tools::scoring::{score_records, MaskCache, RecordReader};

#[derive(Parser)]
struct Args {
    input: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Times to score the whole file (the figure is the total over all repeats).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[arg(long, default_value = "qoq-med")]
    preset: Preset,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let scorer = Scorer::new(&RewardConfig { preset: Some(args.preset), ..Default::default() })?;
    let records = RecordReader::open(&args.input)?.next_chunk(usize::MAX)?;
    let n = records.len();

    // Decoding the masks (PNG) once per distinct file, as the data loader would.
    let decode_start = Instant::now();
    let mut masks = MaskCache::new(&args.input);
    pool.install(|| masks.prepare(&records, &args.input))?;
    let decode_s = decode_start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut checksum = 0.0;
    for _ in 0..args.repeat {
        let scores = pool.install(|| score_records(&scorer, &records, &masks));
        checksum += scores.iter().map(|s| s.overall).sum::<f64>();
    }
    let seconds = start.elapsed().as_secs_f64();
    let scored = n * args.repeat;
    println!(
        "{}",
        serde_json::json!({
            "responses": scored,
            "seconds": seconds,
            "responses_per_s": scored as f64 / seconds,
            "mask_decode_s": decode_s,
            "threads": threads,
            "mean_overall": checksum / scored.max(1) as f64,
            "peak_rss_mib": qoq_tools::peak_rss_mib(),
        })
    );
    Ok(())
}
