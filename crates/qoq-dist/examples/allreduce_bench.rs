//! All-reduce bandwidth of c10d through this crate, the measurement torch.distributed's
//! own benchmarks make: for each buffer size, the mean time of `iters` all_reduce(SUM)
//! calls after `warmup`, the algorithm bandwidth (bytes / time) and the bus bandwidth
//! (x 2(n-1)/n, what a ring moves per rank).
//!
//!     cargo run --release -p qoq-dist --example allreduce_bench -- --nproc 2
//!
//! Without WORLD_SIZE in the environment it starts `--nproc` ranks of itself; under
//! torchrun it is one rank. Rank 0 prints one JSON line per size.

use std::time::{Duration, Instant};

use qoq_dist::{Backend, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nproc: usize = arg("--nproc", "2").parse()?;
    let sizes_mb: Vec<usize> =
        arg("--sizes-mb", "1,4,16,64,256").split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
    let iters: usize = arg("--iters", "10").parse()?;
    let warmup: usize = arg("--warmup", "2").parse()?;
    if std::env::var_os("WORLD_SIZE").is_none() && nproc > 1 {
        let exe = std::env::current_exe()?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let outcome = qoq_dist::launch::run_local(nproc, &exe, &args, &[], Duration::from_secs(60))?;
        if !outcome.success() {
            return Err(format!("a rank failed: {outcome:?}").into());
        }
        return Ok(());
    }
    tch::set_num_threads(1);
    let group = ProcessGroup::from_env(Backend::Gloo, Duration::from_secs(300))?;
    let n = group.world_size() as f64;
    for mb in sizes_mb {
        let elems = (mb << 20) / 4;
        let t = Tensor::ones([elems as i64], (Kind::Float, Device::Cpu));
        for _ in 0..warmup {
            group.all_reduce(&t, ReduceOp::Sum)?;
        }
        group.barrier()?;
        let start = Instant::now();
        for _ in 0..iters {
            group.all_reduce(&t, ReduceOp::Sum)?;
        }
        let secs = start.elapsed().as_secs_f64() / iters as f64;
        let bytes = (elems * 4) as f64;
        let algbw = bytes / secs / 1e9;
        if group.is_main() {
            println!(
                "{{\"impl\": \"qoq-dist\", \"ranks\": {}, \"size_mb\": {mb}, \"time_ms\": {:.3}, \"algbw_gbps\": {:.3}, \"busbw_gbps\": {:.3}}}",
                group.world_size(),
                secs * 1e3,
                algbw,
                algbw * 2.0 * (n - 1.0) / n
            );
        }
    }
    Ok(())
}
