//! Throughput of read + decode + Qwen3-VL preprocess over a shard directory, the same
//! work a training data worker does. Prints one JSON line. Benchmarks live here, not in
//! the tests; experiments/preprocess-throughput/run.sh runs it beside transformers.
//!
//!     cargo run --release --example bench_preprocess -- DIR [--limit N] [--threads T]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qoq_data::preprocess::ImageProcessor;
use qoq_data::{Loader, LoaderConfig, Sample};

#[derive(Parser)]
struct Args {
    dir: PathBuf,
    /// Stop after this many samples (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Worker threads for decode + preprocess (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Pixel budget (forces a resize below 262144 for the 512x512 synthetic images).
    #[arg(long, default_value_t = 16_777_216)]
    max_pixels: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let processor = ImageProcessor::new(qoq_data::preprocess::ImageProcessorConfig {
        max_pixels: args.max_pixels,
        ..Default::default()
    })?;
    let start = Instant::now();
    let (mut images, mut values) = (0usize, 0usize);
    pool.install(|| -> Result<()> {
        let loader = Loader::open(&args.dir, LoaderConfig::default())
            .with_context(|| format!("opening {}", args.dir.display()))?;
        let mut batch: Vec<Sample> = Vec::with_capacity(64);
        let limit = args.limit.unwrap_or(usize::MAX);
        let mut taken = 0;
        let mut flush = |batch: &mut Vec<Sample>| -> Result<()> {
            for counts in qoq_tools::prepare_counts(&processor, batch) {
                let counts = counts?;
                images += counts.inputs;
                values += counts.values;
            }
            batch.clear();
            Ok(())
        };
        for s in loader {
            batch.push(s?);
            taken += 1;
            if batch.len() == 64 {
                flush(&mut batch)?;
            }
            if taken >= limit {
                break;
            }
        }
        flush(&mut batch)
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"impl\": \"qoq-data\", \"threads\": {threads}, \"max_pixels\": {}, \"images\": {images}, \"seconds\": {secs:.3}, \"images_per_s\": {:.1}, \"pixel_values\": {values}, \"peak_rss_mib\": {:.0}}}",
        args.max_pixels,
        images as f64 / secs,
        qoq_tools::peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
