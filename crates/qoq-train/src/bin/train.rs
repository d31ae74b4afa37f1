//! Train a Qwen3-VL policy with SFT and / or DRPO from one TOML configuration.
//!
//!     cargo run --release --bin train -- configs/stage2.toml [--resume]
//!
//! Outputs under run.output_dir: tensorboard/, rollouts/step_N.jsonl, checkpoints/step_N/.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qoq_train::config::TrainConfig;
use qoq_train::Trainer;

#[derive(Parser)]
#[command(about = "SFT and DRPO / GRPO training of a Qwen3-VL policy")]
struct Args {
    /// The run configuration (see configs/stage2.toml for every key).
    config: PathBuf,
    /// Continue from the latest checkpoint in run.output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this invocation (the run can be resumed later).
    #[arg(long)]
    max_steps: Option<u64>,
}

/// Keep freed memory in the process instead of returning it to the kernel after every
/// step: the trainer allocates and frees the same large logits buffers each micro-batch,
/// and glibc's defaults spend more time in page faults than in the forward pass on small
/// models. glibc reads these tunables from the environment only at start-up (mallopt caps the mmap threshold at
/// 32 MB, too low to matter), so the process re-executes itself once with them set.
/// The price is memory: 20 demo SFT steps take 23 s at 4.65 GB peak RSS this way, 66 s at
/// 2.64 GB with glibc's defaults. `QOQ_KEEP_FREED_MEMORY=0` keeps the defaults.
#[cfg(unix)]
fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() || std::env::var("QOQ_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_MMAP_THRESHOLD_", "2000000000")
        .env("MALLOC_TRIM_THRESHOLD_", "4000000000")
        .env("MALLOC_TOP_PAD_", "1000000000")
        .exec();
    // Only reached when the exec failed: carry on with the default allocator settings.
    eprintln!("note: could not re-execute with allocator settings ({err}); continuing");
}

#[cfg(not(unix))]
fn keep_freed_memory() {}

fn main() -> Result<()> {
    keep_freed_memory();
    let args = Args::parse();
    let config = TrainConfig::from_file(&args.config)?;
    let out = config.run.output_dir.clone();
    let mut trainer = Trainer::new(config, args.resume).with_context(|| format!("starting the run in {}", out.display()))?;
    let total = trainer.total_steps();
    let done = trainer.state.step();
    eprintln!(
        "run {}: steps {done}/{total} done ({} SFT + {} RL planned), device {:?}",
        out.display(),
        trainer.config.sft.steps,
        trainer.config.rl.steps,
        trainer.device
    );
    let bar = qoq_cli::progress_bar(total, "steps");
    bar.set_position(done);
    let limit = args.max_steps.map(|n| done + n);
    let mut rl_rewards = Vec::new();
    let started = std::time::Instant::now();
    let result = trainer.run_until(limit, |step, m| {
        if let Some(r) = m.get("reward/overall") {
            rl_rewards.push(r.to_owned());
        }
        bar.set_position(step);
        let reward = m.get("reward/overall").map(|r| format!("reward {r:.3}")).unwrap_or_else(|| {
            m.get("sft/loss").map(|l| format!("sft loss {l:.3}")).unwrap_or_default()
        });
        let speed = m.get("perf/throughput").map(|t| format!("{t:.0} tok/s")).unwrap_or_default();
        bar.set_message(format!("{reward} {speed}"));
        if !bar.is_hidden() {
            return;
        }
        eprintln!("step {step}: {reward} {speed}");
    });
    bar.finish();
    result.with_context(|| format!("training in {}", out.display()))?;
    let n = rl_rewards.len();
    if n > 0 {
        // The demo's learning check: mean reward of the last 10% of RL steps vs the first 10%.
        let tenth = (n / 10).max(1);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "RL reward: first 10% of steps {:.4}, last 10% {:.4} ({n} steps of this invocation)",
            mean(&rl_rewards[..tenth]),
            mean(&rl_rewards[n - tenth..])
        );
    }
    if let Some((step, m)) = &trainer.last_validation {
        let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "validation at step {step}: accuracy {:.4}, F1 {:.4}, reward {:.4}",
            get("val/accuracy"),
            get("val/f1"),
            get("val/reward/overall")
        );
    }
    println!("wall time {:.1} s, peak RSS {:.0} MiB", started.elapsed().as_secs_f64(), qoq_cli::peak_rss_mib().unwrap_or(0.0));
    eprintln!("done: {}", out.display());
    Ok(())
}
