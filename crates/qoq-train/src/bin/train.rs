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

fn main() -> Result<()> {
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
    let result = trainer.run_until(limit, |step, m| {
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
    eprintln!("done: {}", out.display());
    Ok(())
}
