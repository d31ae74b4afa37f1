//! Reads every row of every shard in DIR through the trainer's loader, validates it (full
//! image decode), and prints rows per domain and dataset plus the bad rows with file and
//! row. Exits 0 when the set is usable, non-zero with the reason on stderr otherwise.
//!
//!     cargo run --release --bin inspect-data -- DIR [--preprocess] [--max-bad-fraction F]
//!     cargo run --release --bin inspect-data -- --config configs/data/synthetic.toml --preprocess

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qoq_data::preprocess::{ImageProcessor, ImageProcessorConfig};
use qoq_data::{Checks, Loader, LoaderConfig, Sample, ShardSet};
use qoq_tools::config::RunConfig;

#[derive(Parser)]
#[command(about = "Validate a directory of sample shards and summarise it")]
struct Args {
    /// Directory of *.parquet shards (or one parquet file); default: `data.shards` of --config.
    dir: Option<PathBuf>,
    /// A run configuration whose [data] and [processor] tables to use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also run Qwen3-VL preprocessing on every image and report its throughput.
    #[arg(long)]
    preprocess: bool,
    /// preprocessor_config.json to preprocess with (default: Qwen3-VL's values).
    #[arg(long)]
    processor: Option<PathBuf>,
    /// The set is unusable when more than this fraction of rows is bad (default 0.01,
    /// or `data.max_bad_fraction` of --config).
    #[arg(long)]
    max_bad_fraction: Option<f64>,
    /// How many bad rows to list.
    #[arg(long, default_value_t = 20)]
    show_bad: usize,
}

#[derive(Default)]
struct Counts {
    rows: u64,
    splits: BTreeMap<String, u64>,
    images: u64,
    frames: u64,
    boxes: u64,
    masks: u64,
    ecg: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run = args.config.as_deref().map(RunConfig::from_file).transpose()?;
    let dir = match (&args.dir, &run) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.shards.clone(),
        (None, None) => bail!("give the shard directory, or --config with a [data] table"),
    };
    let set = ShardSet::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let total = set.num_rows() as u64;
    let shard_count = set.shards.len();
    let processor = match (&args.processor, &run) {
        (Some(p), _) => ImageProcessor::new(ImageProcessorConfig::from_json_file(p)?)?,
        (None, Some(r)) => ImageProcessor::new(r.processor())?,
        (None, None) => ImageProcessor::default(),
    };
    // One unshuffled pass over everything, whatever the run's sampling options are.
    let cfg = LoaderConfig {
        max_bad_fraction: args.max_bad_fraction.or(run.as_ref().map(|r| r.loader.max_bad_fraction)).unwrap_or(0.01),
        checks: Checks::FullDecode,
        // Judge the whole set, not whichever shard sorts first.
        abort_early: false,
        ..Default::default()
    };
    let cfg_max_bad = cfg.max_bad_fraction;
    let mut loader = Loader::from_set(set, cfg)?;
    let bar = qoq_tools::progress_bar(total, "reading");
    let start = Instant::now();
    let mut counts: BTreeMap<(String, String), Counts> = BTreeMap::new();
    let (mut prep_images, mut prep_tokens, mut prep_secs) = (0u64, 0u64, 0f64);
    let mut prep_failures: Vec<String> = Vec::new();
    let mut batch: Vec<Sample> = Vec::new();
    let mut failure = None;
    loop {
        let next = loader.next();
        let done = next.is_none();
        match next {
            Some(Ok(sample)) => batch.push(sample),
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            None => {}
        }
        if batch.len() >= 64 || (done && !batch.is_empty()) {
            if args.preprocess {
                let t = Instant::now();
                let results = qoq_tools::prepare_counts(&processor, &batch);
                prep_secs += t.elapsed().as_secs_f64();
                for (s, r) in batch.iter().zip(results) {
                    match r {
                        Ok(c) => {
                            prep_images += c.inputs as u64;
                            prep_tokens += c.tokens as u64;
                        }
                        Err(e) => prep_failures.push(format!("id {:?}: {e}", s.id)),
                    }
                }
            }
            for s in batch.drain(..) {
                let c = counts.entry((s.domain.clone(), s.dataset.clone())).or_default();
                c.rows += 1;
                *c.splits.entry(s.split.clone()).or_default() += 1;
                c.images += s.images.len() as u64;
                c.frames += s.videos.iter().map(|v| v.len() as u64).sum::<u64>();
                c.boxes += s.boxes.len() as u64;
                c.masks += u64::from(s.mask.is_some());
                c.ecg += u64::from(s.ecg.is_some());
            }
            bar.set_position(loader.bad_rows().seen);
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    println!(
        "{:<14} {:<26} {:>7} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>5}",
        "domain", "dataset", "rows", "train", "val", "test", "images", "frames", "boxes", "ecg"
    );
    let mut totals = Counts::default();
    for ((domain, dataset), c) in &counts {
        let split = |k: &str| c.splits.get(k).copied().unwrap_or(0);
        println!(
            "{:<14} {:<26} {:>7} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>5}",
            domain,
            dataset,
            c.rows,
            split("train"),
            split("val"),
            split("test"),
            c.images,
            c.frames,
            c.boxes,
            c.ecg
        );
        totals.rows += c.rows;
        totals.images += c.images;
        totals.frames += c.frames;
        totals.boxes += c.boxes;
        totals.ecg += c.ecg;
    }
    println!(
        "{:<14} {:<26} {:>7} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>5}",
        "total",
        format!("{} shards", shard_count),
        totals.rows,
        "",
        "",
        "",
        totals.images,
        totals.frames,
        totals.boxes,
        totals.ecg
    );

    let bad = loader.bad_rows();
    println!(
        "\nrows read: {}  good: {}  bad: {}  ({:.1} rows/s)",
        bad.seen,
        totals.rows,
        bad.bad,
        bad.seen as f64 / elapsed.max(1e-9)
    );
    for b in bad.examples.iter().take(args.show_bad) {
        println!("  bad: {b}");
    }
    if bad.bad as usize > args.show_bad.min(bad.examples.len()) {
        println!("  ... {} more bad rows", bad.bad as usize - args.show_bad.min(bad.examples.len()));
    }
    if args.preprocess {
        println!(
            "preprocessed {prep_images} images/videos into {prep_tokens} visual tokens: {:.1} images/s on {} threads",
            prep_images as f64 / prep_secs.max(1e-9),
            rayon::current_num_threads()
        );
    }
    if let Some(mb) = qoq_tools::peak_rss_mib() {
        println!("peak RSS: {mb:.0} MiB");
    }
    for f in prep_failures.iter().take(args.show_bad) {
        println!("  preprocessing failed: {f}");
    }
    if let Some(e) = failure {
        return Err(e).context(format!("{} is not usable", dir.display()));
    }
    let all_bad = bad.bad + prep_failures.len() as u64;
    let max_bad = cfg_max_bad;
    if bad.seen > 0 && all_bad as f64 / bad.seen as f64 > max_bad {
        bail!(
            "{}: {all_bad} of {} rows are bad ({} fail preprocessing), more than --max-bad-fraction {max_bad}",
            dir.display(),
            bad.seen,
            prep_failures.len()
        );
    }
    if totals.rows == 0 {
        bail!("{} has no usable rows", dir.display());
    }
    Ok(())
}
