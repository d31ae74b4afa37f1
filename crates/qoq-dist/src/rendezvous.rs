//! Where the ranks meet: the torchrun environment.

use crate::DistError;

/// This rank's place in the job, as torchrun (or [`crate::launch::run_local`], or a
/// Slurm wrapper) describes it in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent serves the store (TORCHELASTIC_USE_AGENT_STORE=True); otherwise
    /// rank 0 does.
    pub agent_store: bool,
    /// torchrun's restart attempt (TORCHELASTIC_RESTART_COUNT), which namespaces the store.
    pub attempt: u32,
}

impl Rendezvous {
    /// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. `None` when
    /// WORLD_SIZE is unset (a plain single process).
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], reading variables through `var` (for tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let Some(world) = var("WORLD_SIZE") else {
            if var("RANK").is_some() {
                return Err(DistError::Environment(
                    "RANK is set but WORLD_SIZE is not: set both (torchrun does)".into(),
                ));
            }
            return Ok(None);
        };
        let number = |key: &str, text: &str| -> Result<usize, DistError> {
            text.trim()
                .parse::<usize>()
                .map_err(|_| DistError::Environment(format!("{key}={text:?} is not a non-negative integer")))
        };
        let world_size = number("WORLD_SIZE", &world)?;
        if world_size == 0 {
            return Err(DistError::Environment("WORLD_SIZE=0: it counts the processes, at least 1".into()));
        }
        let rank = match var("RANK") {
            Some(r) => number("RANK", &r)?,
            None if world_size == 1 => 0,
            None => return Err(DistError::Environment(format!("WORLD_SIZE={world_size} but RANK is not set"))),
        };
        if rank >= world_size {
            return Err(DistError::Environment(format!("RANK={rank} is not below WORLD_SIZE={world_size}")));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(r) => number("LOCAL_RANK", &r)?,
            None => rank,
        };
        let need = |key: &str| -> Result<String, DistError> {
            match var(key) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ if world_size == 1 => Ok(String::new()),
                _ => Err(DistError::Environment(format!("WORLD_SIZE={world_size} but {key} is not set (torchrun sets it; by hand: MASTER_ADDR=<rank 0's host> MASTER_PORT=<free port>)"))),
            }
        };
        let master_addr = need("MASTER_ADDR")?;
        let port = need("MASTER_PORT")?;
        let master_port = if world_size == 1 {
            0
        } else {
            port.parse::<u16>()
                .map_err(|_| DistError::Environment(format!("MASTER_PORT={port:?} is not a port number")))?
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let attempt = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(a) => number("TORCHELASTIC_RESTART_COUNT", &a)? as u32,
            None => 0,
        };
        Ok(Some(Self { rank, world_size, local_rank, master_addr, master_port, agent_store, attempt }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Rendezvous>, DistError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rendezvous::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_environment() {
        let r = parse(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.rank, r.world_size, r.local_rank, r.master_port, r.agent_store, r.attempt),
            (3, 8, 1, 29500, true, 2)
        );
        assert_eq!(r.master_addr, "node0");
    }

    #[test]
    fn single_process_and_errors() {
        assert!(parse(&[]).unwrap().is_none());
        assert_eq!(parse(&[("WORLD_SIZE", "1")]).unwrap().unwrap().world_size, 1);
        let e = |vars: &[(&str, &str)]| parse(vars).unwrap_err().to_string();
        assert!(e(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(e(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")]).contains("MASTER_ADDR"));
        assert!(
            e(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).contains("not below")
        );
        assert!(e(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(e(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")])
            .contains("MASTER_PORT"));
    }
}
