//! Real multi-process collectives over c10d's TCPStore + Gloo: this test binary re-runs
//! itself as N ranks (`launch::run_local`), each running the `worker` test below with a
//! scenario named in QOQ_DIST_SCENARIO; the parent checks exit codes and the messages
//! the ranks leave in a temporary folder.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qoq_dist::launch::{run_local, JobOutcome};
use qoq_dist::{Backend, DistError, ProcessGroup, ReduceOp};
use tch::{Kind, Tensor};

fn run(scenario: &str, nproc: usize, timeout_s: u64) -> (JobOutcome, PathBuf, Duration, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let args: Vec<OsString> =
        ["worker", "--exact", "--nocapture", "--test-threads", "1"].iter().map(OsString::from).collect();
    let env = vec![
        ("QOQ_DIST_SCENARIO".to_string(), scenario.to_string()),
        ("QOQ_DIST_OUT".to_string(), dir.path().display().to_string()),
        ("QOQ_DIST_TIMEOUT_S".to_string(), timeout_s.to_string()),
    ];
    let started = Instant::now();
    let outcome = run_local(nproc, &exe, &args, &env, Duration::from_secs(timeout_s + 30)).unwrap();
    let path = dir.path().to_path_buf();
    (outcome, path, started.elapsed(), dir)
}

fn message(dir: &Path, rank: usize) -> String {
    std::fs::read_to_string(dir.join(format!("rank{rank}.txt"))).unwrap_or_default()
}

/// Entry point of the ranks; a no-op when run as an ordinary test.
#[test]
fn worker() {
    let Ok(scenario) = std::env::var("QOQ_DIST_SCENARIO") else { return };
    let out = PathBuf::from(std::env::var("QOQ_DIST_OUT").unwrap());
    let timeout = Duration::from_secs(std::env::var("QOQ_DIST_TIMEOUT_S").unwrap().parse().unwrap());
    let group = ProcessGroup::from_env(Backend::Gloo, timeout).unwrap();
    let rank = group.rank();
    let result = match scenario.as_str() {
        "collectives" => collectives(&group),
        "rank_fails" => rank_fails(&group),
        "rank_killed" => rank_killed(&group),
        "rank_hangs" => rank_hangs(&group),
        other => panic!("unknown scenario {other}"),
    };
    if let Err(e) = result {
        std::fs::write(out.join(format!("rank{rank}.txt")), e.to_string()).unwrap();
        std::process::exit(1);
    }
}

fn collectives(g: &ProcessGroup) -> Result<(), DistError> {
    let (rank, world) = (g.rank() as f64, g.world_size() as f64);
    // all_reduce: sum, max, min, on a buffer large enough to take Gloo's chunked path.
    let n = 3_000_001;
    let t = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * (rank + 1.0);
    g.all_reduce(&t, ReduceOp::Sum)?;
    let want = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * (world * (world + 1.0) / 2.0);
    assert!(t.allclose(&want, 1e-6, 0.0, false), "all_reduce sum");
    let m = Tensor::from_slice(&[rank, -rank]);
    g.all_reduce(&m, ReduceOp::Max)?;
    assert_eq!(Vec::<f64>::try_from(&m).unwrap(), vec![world - 1.0, 0.0]);
    let m = Tensor::from_slice(&[rank as i64]);
    g.all_reduce(&m, ReduceOp::Min)?;
    assert_eq!(m.int64_value(&[0]), 0);
    // all_gather: every rank's row, in rank order.
    let row = Tensor::from_slice(&[rank as f32, 10.0 * rank as f32]);
    let all = g.all_gather(&row)?;
    assert_eq!(all.size(), vec![g.world_size() as i64, 2]);
    for r in 0..g.world_size() {
        assert_eq!(Vec::<f32>::try_from(all.get(r as i64)).unwrap(), vec![r as f32, 10.0 * r as f32]);
    }
    // reduce_scatter: part r of the sum to rank r.
    let w = g.world_size() as i64;
    let input = Tensor::arange(4 * w, (Kind::Double, tch::Device::Cpu)) + rank;
    let part = g.reduce_scatter(&input, ReduceOp::Sum)?;
    let base = Tensor::arange(4 * w, (Kind::Double, tch::Device::Cpu)) * world + (world * (world - 1.0) / 2.0);
    assert!(part.equal(&base.narrow(0, 4 * g.rank() as i64, 4)), "reduce_scatter part {}", g.rank());
    let odd = g.reduce_scatter(&Tensor::zeros([4 * w + 1], (Kind::Float, tch::Device::Cpu)), ReduceOp::Sum);
    assert!(matches!(odd, Err(DistError::Usage { .. })));
    // gather to the last rank only.
    let got = g.gather(&row, g.world_size() - 1)?;
    if g.rank() == g.world_size() - 1 {
        assert!(got.expect("the root receives").equal(&all), "gather");
    } else {
        assert!(got.is_none());
    }
    // broadcast from the last rank.
    let b = Tensor::from_slice(&[rank, rank]);
    g.broadcast(&b, g.world_size() - 1)?;
    assert_eq!(Vec::<f64>::try_from(&b).unwrap(), vec![world - 1.0; 2]);
    // bytes of different lengths (rank 0 sends none).
    let mine: Vec<u8> = (0..g.rank() * 3).map(|i| i as u8).collect();
    let everyone = g.all_gather_bytes(&mine)?;
    for (r, bytes) in everyone.iter().enumerate() {
        assert_eq!(bytes, &(0..r * 3).map(|i| i as u8).collect::<Vec<u8>>());
    }
    g.barrier()
}

fn rank_fails(g: &ProcessGroup) -> Result<(), DistError> {
    if g.rank() == 2 {
        g.report_failure("shard 7 of the data is unreadable");
        std::process::exit(3);
    }
    g.all_reduce(&Tensor::ones([8], (Kind::Float, tch::Device::Cpu)), ReduceOp::Sum)
}

fn rank_killed(g: &ProcessGroup) -> Result<(), DistError> {
    g.barrier()?;
    if g.rank() == 1 {
        let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
        std::thread::sleep(Duration::from_secs(60));
    }
    g.all_reduce(&Tensor::ones([1 << 16], (Kind::Float, tch::Device::Cpu)), ReduceOp::Sum)
}

fn rank_hangs(g: &ProcessGroup) -> Result<(), DistError> {
    if g.rank() == 1 {
        // Stuck far longer than the collective timeout, then gives up.
        std::thread::sleep(g.timeout() * 4);
        return Ok(());
    }
    g.all_reduce(&Tensor::ones([4], (Kind::Float, tch::Device::Cpu)), ReduceOp::Sum)
}

#[test]
fn two_and_three_ranks_agree() {
    for nproc in [2, 3] {
        let (outcome, dir, _, _keep) = run("collectives", nproc, 60);
        assert!(outcome.success(), "{nproc} ranks: {outcome:?}; rank 0 said {}", message(&dir, 0));
    }
}

#[test]
fn a_failed_rank_is_named_by_the_others() {
    let (outcome, dir, took, _keep) = run("rank_fails", 3, 30);
    assert_eq!(outcome.codes[2], Some(3));
    for r in [0, 1] {
        assert_eq!(outcome.codes[r], Some(1), "rank {r} should exit with the error");
        let m = message(&dir, r);
        assert!(
            m.contains("all_reduce failed") && m.contains("rank 2 failed: shard 7 of the data is unreadable"),
            "rank {r}: {m}"
        );
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_killed_rank_ends_the_job_not_a_hang() {
    let (outcome, dir, took, _keep) = run("rank_killed", 3, 30);
    assert_eq!(outcome.codes[1], None, "rank 1 was killed by a signal");
    for r in [0, 2] {
        assert_eq!(outcome.codes[r], Some(1), "rank {r}");
        let m = message(&dir, r);
        assert!(m.contains("all_reduce failed") && m.contains("no word from rank 1"), "rank {r}: {m}");
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_hung_rank_times_out_with_the_collective_named() {
    let (outcome, dir, took, _keep) = run("rank_hangs", 2, 3);
    assert_eq!(outcome.codes[0], Some(1));
    let m = message(&dir, 0);
    assert!(m.contains("rank 0: all_reduce failed") && m.contains("no word from rank 1"), "{m}");
    assert!(took < Duration::from_secs(3 * 4 + 20), "took {took:?}");
}

#[test]
fn a_group_of_one_is_the_identity() {
    let g = ProcessGroup::single();
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    g.all_reduce(&t, ReduceOp::Sum).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
    assert_eq!(g.all_gather(&t).unwrap().size(), vec![1, 2]);
    assert!(g.reduce_scatter(&t, ReduceOp::Sum).unwrap().equal(&t));
    assert_eq!(g.all_gather_bytes(b"abc").unwrap(), vec![b"abc".to_vec()]);
    g.barrier().unwrap();
}
