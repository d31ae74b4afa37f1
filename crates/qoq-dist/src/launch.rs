//! Starting N ranks on this machine without torchrun: `train CONFIG --nproc N`.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on the loopback interface, for MASTER_PORT.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How a local job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// Exit code per rank (`None`: killed by a signal, or by us after `grace`).
    pub codes: Vec<Option<i32>>,
    /// The first rank that ended unsuccessfully.
    pub first_failure: Option<usize>,
}

impl JobOutcome {
    pub fn success(&self) -> bool {
        self.first_failure.is_none()
    }
}

/// Runs `program args` as ranks 0..nproc of one group on 127.0.0.1 (the environment
/// torchrun would give: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT, plus `env`). When a rank fails, the others get `grace` to notice through
/// their collectives and exit on their own; any still running after that are killed.
pub fn run_local(
    nproc: usize,
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    grace: Duration,
) -> std::io::Result<JobOutcome> {
    let port = free_port()?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)));
        match cmd.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let mut codes: Vec<Option<i32>> = vec![None; nproc];
    let mut first_failure = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait()? {
                Some(status) => {
                    codes[rank] = status.code();
                    if !status.success() && first_failure.is_none() {
                        first_failure = Some(rank);
                        failed_at = Some(Instant::now());
                        eprintln!(
                            "launch: rank {rank} ended with {status}; waiting up to {} s for the other ranks",
                            grace.as_secs()
                        );
                    }
                    *slot = None;
                }
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() > grace) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    eprintln!(
                        "launch: rank {rank} still running {} s after rank {} failed; killing it",
                        grace.as_secs(),
                        first_failure.unwrap_or(0)
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    *slot = None;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(JobOutcome { codes, first_failure })
}
