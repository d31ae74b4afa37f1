//! Evaluate a model on held-out shards the paper's way (docs/evaluation.md).
//!
//!     eval --model DIR --data SHARDS [--split test] [--max-samples N] [--batch B] \
//!          [--temperature T] [--samples K] [--config RUN.toml] [--nproc N] --out OUT_DIR
//!
//! Generates through the rollout engine (greedy by default), scores with the rewards and
//! writes `OUT_DIR/samples.jsonl` (one line per answer, appended as it goes: a rerun skips
//! the ids already there), `OUT_DIR/report.json` (per dataset, domain and overall) and
//! `OUT_DIR/report.md` (the paper's table 2 layout). `score --input OUT_DIR/samples.jsonl
//! --metrics M.json` rescoring the same answers writes the same report. `--config` takes
//! the prompt, processor, reward, sampling and device settings of a training run (the
//! defaults otherwise); its model, data and output are replaced by the flags.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use qoq_dist::ProcessGroup;
use qoq_policy::ModuleGroup;
use qoq_tools::files::write_atomic;
use qoq_train::config::TrainConfig;
use qoq_train::evaluation::{held_out_loader, report, EvalRow, EvalSettings};
use qoq_train::parallel::DataParallel;
use qoq_train::Trainer;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Evaluate a model on held-out shards: per-sample answers and the paper's report")]
struct Args {
    /// The model folder (an HF checkpoint, an export, or a run's checkpoints/step_N/model).
    #[arg(long)]
    model: PathBuf,
    /// The shard folder.
    #[arg(long)]
    data: PathBuf,
    /// The split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate at most the first N samples of the split.
    #[arg(long)]
    max_samples: Option<usize>,
    /// Prompts per prefill (each rank).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Answers per sample (needs a temperature above 0).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Longest answer in tokens (default: the run config's rl.max_new_tokens).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// A training run's configuration whose [prompt], [processor], [reward], sampling,
    /// device and dtype settings to use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The output folder.
    #[arg(long)]
    out: PathBuf,
    /// Start this many ranks on this machine (not needed under torchrun).
    #[arg(long, default_value_t = 1)]
    nproc: usize,
}

/// What an output folder was made with: a rerun must match it to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EvalIdentity {
    model: PathBuf,
    data: PathBuf,
    split: String,
    temperature: f64,
    samples: usize,
    max_new_tokens: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    qoq_tools::ranks::keep_freed_memory();
    if args.samples == 0 || args.batch == 0 {
        bail!("--samples and --batch must be at least 1");
    }
    if args.samples > 1 && args.temperature <= 0.0 {
        bail!("--samples {} needs --temperature above 0 (greedy answers are all the same)", args.samples);
    }
    let config = eval_config(&args)?;
    if args.nproc > 1 && std::env::var_os("WORLD_SIZE").is_none() {
        let exe = std::env::current_exe().context("finding this program to start the ranks")?;
        let child = without_nproc(std::env::args_os().skip(1));
        eprintln!("launch: {} ranks of {}", args.nproc, exe.display());
        let grace = Duration::from_secs(config.distributed.timeout_s + 30);
        return qoq_tools::ranks::run_local(args.nproc, &exe, &child, grace);
    }
    qoq_tools::ranks::run_as_rank(config, |config, group| evaluate(&args, config, group))
}

/// The arguments for the ranks: these, less `--nproc N` / `--nproc=N`.
fn without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip_value = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// The run configuration: `--config`'s (or the defaults), training nothing, with the
/// model, data and output of the flags.
fn eval_config(args: &Args) -> Result<TrainConfig> {
    let quoted = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let mut config = match &args.config {
        Some(path) => TrainConfig::parse_file(path)?,
        None => {
            let text = format!(
                "[run]\noutput_dir = {}\n[model]\npath = {}\n[data]\nshards = {}\n",
                quoted(&args.out),
                quoted(&args.model),
                quoted(&args.data)
            );
            toml::from_str(&text).context("building the default configuration")?
        }
    };
    config.run.output_dir = args.out.clone();
    config.model.path = args.model.clone();
    // A checkpoint carries its own ECG path; nothing trains.
    config.model.ecg_encoder = None;
    config.model.ecg_encoder_sizes = None;
    config.model.freeze = ModuleGroup::ALL.to_vec();
    config.sft.steps = 0;
    config.rl.steps = 0;
    config.validation.every = 0;
    for key in ["epochs", "domain_weights"] {
        config.data.remove(key);
    }
    config.data.insert("shards".into(), toml::Value::String(args.data.display().to_string()));
    config.data.insert("splits".into(), toml::Value::Array(vec![toml::Value::String(args.split.clone())]));
    config.data.insert("shuffle".into(), toml::Value::Boolean(false));
    let source = args.config.as_deref().map_or("the eval flags".to_string(), |p| p.display().to_string());
    config.check(true).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(config)
}

fn evaluate(args: &Args, config: TrainConfig, group: Rc<ProcessGroup>) -> Result<()> {
    let started = Instant::now();
    let out = args.out.clone();
    let dp = DataParallel {
        bucket_elems: qoq_train::parallel::bucket_elems(config.distributed.bucket_mb),
        sharding: config.distributed.sharding(),
        group,
    };
    let (main_rank, world) = (dp.is_main(), dp.world());
    let identity = EvalIdentity {
        model: args.model.clone(),
        data: args.data.clone(),
        split: args.split.clone(),
        temperature: args.temperature,
        samples: args.samples,
        max_new_tokens: args.max_new_tokens.unwrap_or(config.rl.max_new_tokens),
    };
    let settings = EvalSettings {
        temperature: args.temperature,
        max_new_tokens: identity.max_new_tokens,
        samples_per_prompt: args.samples,
        batch_size: args.batch,
        masks: true,
    };
    let (shards, loader_config) = config.loader().map_err(anyhow::Error::msg)?;
    let mut trainer =
        Trainer::new(config, false, dp).with_context(|| format!("loading {} for evaluation", args.model.display()))?;
    let labels = trainer.label_options();
    let output = Output::new(&out);
    // Rank 0 decides what is done; every rank skips the same ids.
    let done = if main_rank { output.prepare(&identity)? } else { HashSet::new() };
    let done: HashSet<String> = trainer.data_parallel().gather(&done)?.swap_remove(0);
    let ecg = trainer.policy_has_ecg();
    let mut loader = held_out_loader(&shards, std::slice::from_ref(&args.split), loader_config, ecg)?;
    let total = args.max_samples.map_or(loader.epoch_len(), |n| (n as u64).min(loader.epoch_len()));
    let bar = if main_rank { qoq_tools::progress_bar(total, "samples") } else { indicatif::ProgressBar::hidden() };
    let answered_all = |id: &str| (0..args.samples).all(|k| done.contains(&format!("{id}#{k}")));
    let chunk_len = args.batch * world * 4;
    let (mut chunk, mut ordinals) = (Vec::new(), Vec::new());
    let (mut skipped, mut answered) = (0usize, 0usize);
    // Answers the pending samples (every rank), rank 0 appends them.
    let mut answer_pending = |chunk: &mut Vec<qoq_data::Sample>, ordinals: &mut Vec<usize>| -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let rows = trainer.answer(chunk, ordinals, &settings, 0)?;
        if main_rank {
            output.append(&rows, &done)?;
        }
        answered += chunk.len();
        bar.inc(chunk.len() as u64);
        chunk.clear();
        ordinals.clear();
        Ok(())
    };
    for (ordinal, sample) in loader.by_ref().take(total as usize).enumerate() {
        let sample = sample.with_context(|| format!("reading {}", shards.display()))?;
        if answered_all(&sample.id) {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        chunk.push(sample);
        ordinals.push(ordinal);
        if chunk.len() == chunk_len {
            answer_pending(&mut chunk, &mut ordinals)?;
        }
    }
    answer_pending(&mut chunk, &mut ordinals)?;
    bar.finish_and_clear();
    if !main_rank {
        return Ok(());
    }
    let rows = output.read_rows()?;
    let figures = report(&rows, labels);
    let json = serde_json::to_string_pretty(&figures)? + "\n";
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    let table = figures.markdown_table();
    write_atomic(&out.join("report.md"), table.as_bytes())?;
    println!("{table}");
    eprintln!(
        "answered {answered} samples ({skipped} already in {}) on {} rank(s) in {:.1} s; peak RSS {:.0} MiB",
        output.samples.display(),
        world,
        started.elapsed().as_secs_f64(),
        qoq_tools::peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}

/// The output folder: `samples.jsonl` (appended), `masks/`, `eval.json` (the identity).
struct Output {
    dir: PathBuf,
    samples: PathBuf,
}

impl Output {
    fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), samples: dir.join("samples.jsonl") }
    }

    /// Creates the folder, checks it was made with the same settings, drops a torn last
    /// line (a killed run's), and returns the keys already answered.
    fn prepare(&self, identity: &EvalIdentity) -> Result<HashSet<String>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let id_path = self.dir.join("eval.json");
        if id_path.exists() {
            let text = std::fs::read_to_string(&id_path).with_context(|| format!("reading {}", id_path.display()))?;
            let before: EvalIdentity = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an eval identity file: delete it", id_path.display()))?;
            if &before != identity {
                bail!(
                    "{} holds an evaluation with other settings ({before:?}, now {identity:?}): use another --out, or delete the folder",
                    self.dir.display()
                );
            }
        } else {
            write_atomic(&id_path, (serde_json::to_string_pretty(identity)? + "\n").as_bytes())?;
        }
        if !self.samples.exists() {
            return Ok(HashSet::new());
        }
        let text =
            std::fs::read_to_string(&self.samples).with_context(|| format!("reading {}", self.samples.display()))?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A run killed mid-line: keep the whole lines.
            let keep = text.rfind('\n').map_or(0, |i| i + 1);
            eprintln!("{}: dropping a torn last line (the run that wrote it was interrupted)", self.samples.display());
            write_atomic(&self.samples, &text.as_bytes()[..keep])?;
            return Ok(self.parse_rows(&text[..keep])?.iter().map(EvalRow::key).collect());
        }
        Ok(self.parse_rows(&text)?.iter().map(EvalRow::key).collect())
    }

    fn read_rows(&self) -> Result<Vec<EvalRow>> {
        match std::fs::read_to_string(&self.samples) {
            Ok(text) => self.parse_rows(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.samples.display())),
        }
    }

    /// The rows of `samples.jsonl`'s text; a bad line is an error naming it.
    fn parse_rows(&self, text: &str) -> Result<Vec<EvalRow>> {
        let lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        lines
            .map(|(i, line)| {
                serde_json::from_str(line).with_context(|| {
                    format!("{} line {}: not an eval row; delete the line or the folder", self.samples.display(), i + 1)
                })
            })
            .collect()
    }

    /// Appends the rows not yet written, and their masks, flushed to disk.
    fn append(&self, rows: &[EvalRow], done: &HashSet<String>) -> Result<()> {
        let mut text = String::new();
        for row in rows.iter().filter(|r| !done.contains(&r.key())) {
            let mut line = serde_json::to_value(row)?;
            if let Some(png) = &row.mask_png {
                let name = format!("masks/{}.png", file_safe(&row.id));
                let path = self.dir.join(&name);
                if !path.exists() {
                    std::fs::create_dir_all(self.dir.join("masks"))?;
                    write_atomic(&path, png)?;
                }
                line["mask"] = serde_json::Value::String(name);
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.samples)
            .with_context(|| format!("opening {}", self.samples.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("writing {}", self.samples.display()))?;
        file.sync_data().with_context(|| format!("writing {}", self.samples.display()))
    }
}

/// An id as a file name: anything but letters, digits, `-`, `_` and `.` becomes `_`, and a
/// hash of the id keeps two ids apart.
fn file_safe(id: &str) -> String {
    let clean: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let hash = id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{clean}-{:08x}", hash as u32)
}
