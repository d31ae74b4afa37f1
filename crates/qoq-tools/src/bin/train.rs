//! Train a Qwen3-VL policy with SFT and / or DRPO from one TOML configuration.
//!
//!     cargo run --release --bin train -- configs/stage2.toml [--resume]
//!     train CONFIG --resume-from OUTPUT_DIR/checkpoints/step_N   # continue from that checkpoint
//!     train CONFIG --nproc 4                                   # 4 local ranks
//!     torchrun --no-python --nproc-per-node 8 target/release/train CONFIG
//!     train CONFIG --plan [--world-size 8] [--device-memory-gb 80]  # memory per rank, nothing loaded
//!
//! Ranks find each other from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//! (what torchrun sets; `--nproc` sets them for its children).
//!
//! Outputs under run.output_dir: tensorboard/, rollouts/step_N.jsonl, checkpoints/step_N/.

use std::ffi::OsString;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use qoq_dist::ProcessGroup;
use qoq_train::checkpoint::Resume;
use qoq_train::config::TrainConfig;
use qoq_train::parallel::DataParallel;
use qoq_train::Trainer;

#[derive(Parser)]
#[command(about = "SFT and DRPO / GRPO training of a Qwen3-VL policy")]
struct Args {
    /// The run configuration (see configs/stage2.toml for every key).
    config: PathBuf,
    /// Continue from the latest checkpoint in run.output_dir (checked whole first: a
    /// damaged one is an error naming the file and the newest whole checkpoint).
    #[arg(long, conflicts_with = "resume_from")]
    resume: bool,
    /// Continue from this checkpoint folder (OUTPUT_DIR/checkpoints/step_N), e.g. the one
    /// `--resume` names when the newest is damaged. Later checkpoints in run.output_dir are
    /// kept, renamed step_N.superseded.
    #[arg(long, value_name = "PATH")]
    resume_from: Option<PathBuf>,
    /// Stop after this many steps of this invocation (the run can be resumed later).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Start this many ranks on this machine (data parallel over Gloo on CPU, NCCL on
    /// GPUs) instead of one process; not needed under torchrun.
    #[arg(long, default_value_t = 1)]
    nproc: usize,
    /// Print the memory plan per rank (every term, each phase, the peak) from CONFIG and
    /// model.path/config.json alone, and exit: no weights, tokenizer, data or device.
    #[arg(long)]
    plan: bool,
    /// With --plan: ranks to plan for (default: --nproc, else WORLD_SIZE, else 1).
    #[arg(long, value_name = "N", requires = "plan")]
    world_size: Option<usize>,
    /// With --plan: exit non-zero when the peak per rank exceeds G GiB (vendors' "80 GB"
    /// and "141 GB" GPUs hold 79.6 and 140.4 GiB).
    #[arg(long, value_name = "G", requires = "plan")]
    device_memory_gb: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.plan {
        return plan(&args);
    }
    qoq_tools::ranks::keep_freed_memory();
    let config = TrainConfig::from_file(&args.config)?;
    if args.nproc > 1 && std::env::var_os("WORLD_SIZE").is_none() {
        return launch(&args, &config);
    }
    qoq_tools::ranks::run_as_rank(config, |config, group| train(&args, config, group))
}

/// `--plan`: prints the memory plan; fails when it exceeds `--device-memory-gb`.
fn plan(args: &Args) -> Result<()> {
    let env_world = std::env::var("WORLD_SIZE").ok().and_then(|v| v.parse().ok());
    let world = args.world_size.or((args.nproc > 1).then_some(args.nproc)).or(env_world);
    let plan = qoq_train::plan::plan_file(&args.config, world)?;
    println!("{plan}");
    if let Some(limit) = args.device_memory_gb {
        plan.check_fits(limit).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// `--nproc N`: runs N copies of this program as ranks 0..N-1 on 127.0.0.1 and waits;
/// when one fails the others stop within the collective timeout.
fn launch(args: &Args, config: &TrainConfig) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to start the ranks")?;
    let mut child_args: Vec<OsString> = vec![args.config.clone().into_os_string()];
    if args.resume {
        child_args.push("--resume".into());
    }
    if let Some(dir) = &args.resume_from {
        child_args.extend(["--resume-from".into(), dir.clone().into_os_string()]);
    }
    if let Some(n) = args.max_steps {
        child_args.extend(["--max-steps".into(), n.to_string().into()]);
    }
    eprintln!("launch: {} ranks of {}", args.nproc, exe.display());
    let grace = Duration::from_secs(config.distributed.timeout_s + 30);
    qoq_tools::ranks::run_local(args.nproc, &exe, &child_args, grace)
}

fn train(args: &Args, config: TrainConfig, group: Rc<ProcessGroup>) -> Result<()> {
    let out = config.run.output_dir.clone();
    let dp = DataParallel {
        group,
        bucket_elems: qoq_train::parallel::bucket_elems(config.distributed.bucket_mb),
        sharding: config.distributed.sharding(),
    };
    let main_rank = dp.is_main();
    let (rank, world) = (dp.rank(), dp.world());
    let resume = match &args.resume_from {
        Some(dir) => Resume::From(dir.clone()),
        None => Resume::from(args.resume),
    };
    let mut trainer =
        Trainer::new(config, resume, dp).with_context(|| format!("starting the run in {}", out.display()))?;
    let total = trainer.total_steps();
    let done = trainer.steps_done();
    if main_rank {
        eprintln!(
            "run {}: steps {done}/{total} done ({} SFT + {} RL planned), device {:?}, {world} rank(s){}",
            out.display(),
            trainer.config.sft.steps,
            trainer.config.rl.steps,
            trainer.device(),
            match trainer.config.distributed.sharding() {
                qoq_train::config::Sharding::None => String::new(),
                s => format!(", sharding {s:?}").to_lowercase(),
            }
        );
    }
    let bar = if main_rank { qoq_tools::progress_bar(total, "steps") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(done);
    let limit = args.max_steps.map(|n| done + n);
    let mut rl_rewards = Vec::new();
    let started = std::time::Instant::now();
    let result = trainer.run_until(limit, |step, m| {
        if let Some(r) = m.get("reward/overall") {
            rl_rewards.push(r.to_owned());
        }
        if !main_rank {
            return;
        }
        bar.set_position(step);
        let reward = m
            .get("reward/overall")
            .map(|r| format!("reward {r:.3}"))
            .unwrap_or_else(|| m.get("sft/loss").map(|l| format!("sft loss {l:.3}")).unwrap_or_default());
        let speed = m.get("perf/throughput").map(|t| format!("{t:.0} tok/s")).unwrap_or_default();
        bar.set_message(format!("{reward} {speed}"));
        if !bar.is_hidden() {
            return;
        }
        eprintln!("step {step}: {reward} {speed}");
    });
    bar.finish();
    result.with_context(|| format!("training in {}", out.display()))?;
    let peak = qoq_tools::peak_rss_mib().unwrap_or(0.0);
    let state_mib = trainer.optimizer_state_bytes() as f64 / (1 << 20) as f64;
    if world > 1 {
        // One write, so lines of ranks sharing a terminal do not interleave.
        let line = format!("rank {rank} of {world}: peak RSS {peak:.0} MiB, optimizer state {state_mib:.1} MiB\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
    if !main_rank {
        return Ok(());
    }
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
    // The end of SFT first (when this invocation ran it), so the RL phase's held-out effect
    // reads off two lines.
    let sft_step = trainer.sft_validation().map(|(step, _)| *step);
    let last = trainer.last_validation().filter(|(step, _)| Some(*step) != sft_step);
    for (step, m) in trainer.sft_validation().into_iter().chain(last) {
        let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "validation at step {step}: accuracy {:.4}, F1 {:.4}, reward {:.4}",
            get("val/accuracy"),
            get("val/f1"),
            get("val/reward/overall")
        );
    }
    println!(
        "wall time {:.1} s, peak RSS {peak:.0} MiB, optimizer state {state_mib:.1} MiB (rank 0 of {world})",
        started.elapsed().as_secs_f64()
    );
    eprintln!("done: {}", out.display());
    Ok(())
}
