//! Memory readings for the logs, and handing freed heap memory back to the kernel.

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resident set size of this process now, in MiB (Linux `VmRSS`), if known.
pub fn resident_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`). `train` keeps
/// freed medium buffers in the heap for reuse (qoq-tools `keep_freed_memory`); in bf16 their
/// sizes vary enough that the heap fragments and the peak creeps up step by step (3.2 GB
/// at the end of the bf16 demo against 0.9 GB live). The trainer calls this after every
/// step and between the phases of an RL step, which caps that creep at one phase's worth,
/// at the cost of re-faulting those pages. `QOQ_TRIM_FREED_MEMORY=0` or
/// [`set_trim_freed_memory`]`(false)` (the trainer's `run.trim_freed_memory`) turns it off.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ENV_ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let env_enabled = *ENV_ENABLED.get_or_init(|| !std::env::var("QOQ_TRIM_FREED_MEMORY").is_ok_and(|v| v == "0"));
        if env_enabled && !TRIM_OFF.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: malloc_trim only returns free memory of glibc's own arenas to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// Set by [`set_trim_freed_memory`]`(false)`.
static TRIM_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns [`release_freed_memory`] on (the default) or off for this process.
pub fn set_trim_freed_memory(enabled: bool) {
    TRIM_OFF.store(!enabled, std::sync::atomic::Ordering::Relaxed);
}
