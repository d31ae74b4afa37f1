//! What the binaries that run as ranks share (`train`, `eval`): the allocator settings,
//! the cores per local rank, and `--nproc`'s local launch.

use std::ffi::OsString;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use qoq_dist::{Backend, ProcessGroup};
use qoq_train::config::TrainConfig;

/// Keep freed memory in the process instead of returning it to the kernel after every
/// step: glibc's defaults trim and unmap medium buffers as soon as they are freed, and the
/// page faults of re-touching them cost more than the forward pass on small models. Buffers
/// of 32 MB and more (the log-prob chunks) are still mapped and unmapped each time, so a
/// freed one never pins memory; smaller ones stay in the heap (trimmed above 256 MB free,
/// grown 64 MB at a time). A 2 GB threshold (all buffers in the heap) fragmented the heap
/// of a bf16 run until the kernel killed it (14.5 GB RSS at step 53 of the demo).
/// glibc reads these tunables from the environment only at start-up, so the process
/// re-executes itself once with them set. `QOQ_KEEP_FREED_MEMORY=0` keeps glibc's defaults;
/// a `MALLOC_MMAP_THRESHOLD_` already set is left alone.
pub fn keep_freed_memory() {
    keep_freed_memory_below(32 << 20);
}

/// [`keep_freed_memory`] with buffers up to `mmap_threshold` bytes kept in the heap (and a
/// trim threshold of 8 x that): for a tool whose few large buffers recur every step, such
/// as `pretrain-ecg-encoder`'s 82 MB attention scores.
#[cfg(unix)]
pub fn keep_freed_memory_below(mmap_threshold: u64) {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("QOQ_KEEP_FREED_MEMORY").is_ok_and(|v| v == "0")
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_MMAP_THRESHOLD_", mmap_threshold.to_string())
        .env("MALLOC_TRIM_THRESHOLD_", (8 * mmap_threshold).to_string())
        .env("MALLOC_TOP_PAD_", (64u64 << 20).to_string())
        .exec();
    // Only reached when the exec failed: carry on with the default allocator settings.
    eprintln!("note: could not re-execute with allocator settings ({err}); continuing");
}

#[cfg(not(unix))]
pub fn keep_freed_memory_below(_mmap_threshold: u64) {}

/// Several ranks on one machine share its cores: unless `threads` (run.threads) says otherwise, each
/// takes cores / ranks-on-this-machine for libtorch and for rayon.
pub fn share_cores(threads: i32, world: usize) {
    let local: usize = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(world);
    if local <= 1 || threads > 0 {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let each = (cores / local).max(1);
    tch::set_num_threads(each as i32);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(each).build_global();
    }
}

/// `--nproc N`: runs N copies of `exe` as ranks 0..N-1 on 127.0.0.1 and waits; when one
/// fails the others stop within `grace`. The error names the rank that failed first.
pub fn run_local(nproc: usize, exe: &Path, child_args: &[OsString], grace: Duration) -> Result<()> {
    let outcome = qoq_dist::launch::run_local(nproc, exe, child_args, &[], grace).context("starting the ranks")?;
    match outcome.first_failure {
        None => Ok(()),
        Some(rank) => {
            let codes: Vec<String> = outcome
                .codes
                .iter()
                .enumerate()
                .map(|(r, c)| format!("rank {r}: {}", c.map_or("killed".into(), |c| format!("exit {c}"))))
                .collect();
            anyhow::bail!("rank {rank} failed first ({})", codes.join(", "))
        }
    }
}

/// Runs `work` as this process's rank: joins the other ranks (from RANK, WORLD_SIZE, ...;
/// one rank without them) over the backend of the config's device, shares the cores, and on
/// failure tells the other ranks (so their errors name this one) and names the rank.
pub fn run_as_rank(config: TrainConfig, work: impl FnOnce(TrainConfig, Rc<ProcessGroup>) -> Result<()>) -> Result<()> {
    let backend = Backend::for_device(config.run.device.device(0));
    let group = ProcessGroup::from_env(backend, Duration::from_secs(config.distributed.timeout_s))
        .context("joining the other ranks")?;
    share_cores(config.run.threads, group.world_size());
    let group = Rc::new(group);
    let result = work(config, Rc::clone(&group));
    if let Err(e) = &result {
        group.report_failure(&format!("{e:#}"));
    }
    if group.world_size() > 1 {
        return result.with_context(|| format!("rank {} of {}", group.rank(), group.world_size()));
    }
    result
}
