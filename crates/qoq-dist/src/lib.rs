//! Data-parallel collectives for tch tensors on PyTorch's own c10d runtime (the engine
//! under `torch.distributed`), reached through a small C++ shim: a TCPStore rendezvous,
//! ProcessGroupGloo for CPU tensors and (feature `cuda`) ProcessGroupNCCL for CUDA tensors.
//!
//! Ranks meet the torchrun way, from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
//! MASTER_PORT, so `torchrun --no-python`, Slurm wrappers, plain shells and
//! [`launch::run_local`] all start the same binary. Without those variables a process is
//! a group of one and every collective is the identity.
//!
//! Every collective waits at most the group's timeout and fails with an error naming the
//! collective; on failure the rank asks the rendezvous store which peers are still there,
//! so the error also names the rank that failed (its own message when it reported one
//! through [`ProcessGroup::report_failure`]) or that stopped answering.
//!
//! ```no_run
//! use qoq_dist::{Backend, ProcessGroup, ReduceOp};
//! let group = ProcessGroup::from_env(Backend::Gloo, std::time::Duration::from_secs(60))?;
//! let t = tch::Tensor::from_slice(&[group.rank() as f32 + 1.0]);
//! group.all_reduce(&t, ReduceOp::Sum)?; // 1 + 2 + ... + world_size on every rank
//! # Ok::<(), qoq_dist::DistError>(())
//! ```

mod error;
mod ffi;
pub mod launch;
mod rendezvous;

use std::ffi::{c_char, c_int, c_void, CString};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

pub use error::DistError;
pub use rendezvous::Rendezvous;

/// The reductions every backend supports (Gloo has no average: sum and divide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors (always built).
    Gloo,
    /// CUDA tensors (feature `cuda`).
    Nccl,
}

impl Backend {
    /// The backend for tensors on `device`.
    pub fn for_device(device: Device) -> Self {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
}

/// A process group: this rank's handle on the collectives of all ranks.
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    backend: Backend,
    timeout: Duration,
    addr: String,
    /// This rank serves the rendezvous store (rank 0, unless torchrun's agent does).
    serves_store: bool,
}

// SAFETY: the c10d objects behind `raw` are used from one thread at a time (collectives
// take &self but ProcessGroup is not Sync), and c10d does not tie them to their thread.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {}/{}, {:?}, {})", self.rank, self.world_size, self.backend, self.addr)
    }
}

/// How long a failed rank waits for its peers to say whether they are alive.
const CENSUS_WAIT: Duration = Duration::from_secs(5);

impl ProcessGroup {
    /// A group of one: every collective is the identity.
    pub fn single() -> Self {
        Self {
            raw: std::ptr::null_mut(),
            rank: 0,
            world_size: 1,
            local_rank: 0,
            backend: Backend::Gloo,
            timeout: Duration::MAX,
            addr: "local".into(),
            serves_store: false,
        }
    }

    /// Joins the group the torchrun environment describes, or [`Self::single`] when there
    /// is none (or WORLD_SIZE is 1).
    pub fn from_env(backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        match Rendezvous::from_env()? {
            Some(r) => Self::init(&r, backend, timeout),
            None => Ok(Self::single()),
        }
    }

    /// Meets the other ranks at `r` (rank 0 serves the TCPStore unless torchrun's agent
    /// does) and creates the backend's process group. Blocks until all ranks arrive or
    /// `timeout` passes.
    pub fn init(r: &Rendezvous, backend: Backend, timeout: Duration) -> Result<Self, DistError> {
        if r.world_size == 1 {
            let mut single = Self::single();
            single.local_rank = r.local_rank;
            return Ok(single);
        }
        let addr = format!("{}:{}", r.master_addr, r.master_port);
        let init_err = |message: String| DistError::Init { rank: r.rank, addr: addr.clone(), message };
        if backend == Backend::Nccl {
            // Make a timed-out NCCL collective raise on the host instead of only aborting
            // from the watchdog thread.
            if std::env::var_os("TORCH_NCCL_BLOCKING_WAIT").is_none() {
                std::env::set_var("TORCH_NCCL_BLOCKING_WAIT", "1");
            }
        }
        let host = CString::new(r.master_addr.clone()).map_err(|_| init_err("MASTER_ADDR holds a NUL byte".into()))?;
        // torchrun's agent store namespaces each restart attempt; ours sits under it.
        let prefix = CString::new(format!("/worker/attempt_{}/qoq", r.attempt)).expect("no NUL in a formatted number");
        let timeout_ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid C strings for the call's duration; err is written only on failure.
        let raw = unsafe {
            ffi::qoq_dist_new(
                host.as_ptr(),
                c_int::from(r.master_port),
                r.rank as c_int,
                r.world_size as c_int,
                match backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                timeout_ms,
                c_int::from(r.agent_store),
                prefix.as_ptr(),
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(init_err(ffi::take_message(err)));
        }
        Ok(Self {
            raw,
            rank: r.rank,
            world_size: r.world_size,
            local_rank: r.local_rank,
            backend,
            timeout,
            addr,
            serves_store: r.rank == 0 && !r.agent_store,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The rank among the processes of this machine (picks the GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0: the one that writes logs and checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reduces `t` in place across ranks (every rank ends with the result).
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        if self.world_size == 1 {
            return Ok(());
        }
        self.check_tensor("all_reduce", t)?;
        self.call("all_reduce", |err| unsafe { ffi::qoq_dist_all_reduce(self.raw, ffi::tensor_ptr(t), op.code(), err) })
    }

    /// Every rank's `input` (same shape on all ranks), stacked: `[world_size, ..input.size()]`.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor, DistError> {
        let mut shape = vec![self.world_size as i64];
        shape.extend(input.size());
        if self.world_size == 1 {
            return Ok(input.detach().copy().reshape(shape.as_slice()));
        }
        self.check_tensor("all_gather", input)?;
        // The flat form c10d's `_allgather_base` takes: world_size equal parts.
        let flat_in = input.view([-1]);
        let output = Tensor::empty([self.world_size as i64 * input.numel() as i64], (input.kind(), input.device()));
        self.call("all_gather", |err| unsafe {
            ffi::qoq_dist_all_gather(self.raw, ffi::tensor_ptr(&output), ffi::tensor_ptr(&flat_in), err)
        })?;
        Ok(output.view(shape.as_slice()))
    }

    /// Splits the flat `input` (numel divisible by the world size) into world_size equal
    /// parts and gives rank r the reduction over ranks of part r.
    pub fn reduce_scatter(&self, input: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let n = input.numel();
        if !n.is_multiple_of(self.world_size) || input.dim() != 1 {
            return Err(self.usage(
                "reduce_scatter",
                format!("needs a 1-D tensor whose length divides by {}, got shape {:?}", self.world_size, input.size()),
            ));
        }
        if self.world_size == 1 {
            return Ok(input.detach().copy());
        }
        self.check_tensor("reduce_scatter", input)?;
        let output = Tensor::empty([(n / self.world_size) as i64], (input.kind(), input.device()));
        self.call("reduce_scatter", |err| unsafe {
            ffi::qoq_dist_reduce_scatter(self.raw, ffi::tensor_ptr(&output), ffi::tensor_ptr(input), op.code(), err)
        })?;
        Ok(output)
    }

    /// Every rank's `input` (same shape on all ranks), stacked `[world_size, ..]`, on rank
    /// `root` only (`None` elsewhere): a checkpoint's writer collects without the other
    /// ranks holding the whole.
    pub fn gather(&self, input: &Tensor, root: usize) -> Result<Option<Tensor>, DistError> {
        let mut shape = vec![self.world_size as i64];
        shape.extend(input.size());
        if self.world_size == 1 {
            return Ok(Some(input.detach().copy().reshape(shape.as_slice())));
        }
        self.check_tensor("gather", input)?;
        let flat_in = input.view([-1]);
        let output = (self.rank == root)
            .then(|| Tensor::empty([self.world_size as i64 * input.numel() as i64], (input.kind(), input.device())));
        let out_ptr = output.as_ref().map_or(std::ptr::null_mut(), ffi::tensor_ptr);
        self.call("gather", |err| unsafe {
            ffi::qoq_dist_gather(self.raw, out_ptr, ffi::tensor_ptr(&flat_in), root as c_int, err)
        })?;
        Ok(output.map(|o| o.view(shape.as_slice())))
    }

    /// Copies rank `root`'s `t` into `t` on every rank.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        if self.world_size == 1 {
            return Ok(());
        }
        self.check_tensor("broadcast", t)?;
        self.call("broadcast", |err| unsafe {
            ffi::qoq_dist_broadcast(self.raw, ffi::tensor_ptr(t), root as c_int, err)
        })
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        if self.world_size == 1 {
            return Ok(());
        }
        self.call("barrier", |err| unsafe { ffi::qoq_dist_barrier(self.raw, err) })
    }

    /// Every rank's bytes (any length), in rank order. Two collectives: the lengths, then
    /// the bytes padded to the longest.
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        if self.world_size == 1 {
            return Ok(vec![bytes.to_vec()]);
        }
        let device = self.collective_device();
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
        let lens = Vec::<i64>::try_from(self.all_gather(&len)?.to_device(Device::Cpu).view([-1]))
            .map_err(|e| self.usage("all_gather_bytes", e.to_string()))?;
        let max = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = bytes.to_vec();
        padded.resize(max, 0);
        let all = self.all_gather(&Tensor::from_slice(&padded).to_device(device))?.to_device(Device::Cpu);
        let flat = Vec::<u8>::try_from(all.view([-1])).map_err(|e| self.usage("all_gather_bytes", e.to_string()))?;
        Ok(flat.chunks(max).zip(&lens).map(|(c, &l)| c[..l as usize].to_vec()).collect())
    }

    /// Tells the other ranks why this one is about to stop, so their errors can name it.
    /// Best effort: a store that is gone is ignored.
    pub fn report_failure(&self, message: &str) {
        if self.world_size > 1 {
            let _ = self.store_set(&format!("failed/{}", self.rank), message.as_bytes());
        }
    }

    /// Where this group's tensors must live: the CPU for Gloo, this rank's GPU for NCCL.
    pub fn collective_device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => Device::Cuda(self.local_rank),
        }
    }

    fn usage(&self, op: &'static str, message: String) -> DistError {
        DistError::Usage { rank: self.rank, op, message }
    }

    fn check_tensor(&self, op: &'static str, t: &Tensor) -> Result<(), DistError> {
        if !t.is_contiguous() {
            return Err(self.usage(op, "needs a contiguous tensor".into()));
        }
        let want = self.collective_device();
        if t.device() != want {
            return Err(self
                .usage(op, format!("the {:?} backend needs tensors on {want:?}, got {:?}", self.backend, t.device())));
        }
        if t.kind() == Kind::Bool {
            return Err(self.usage(op, "bool tensors are not reducible; use uint8".into()));
        }
        Ok(())
    }

    fn call(&self, op: &'static str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), DistError> {
        let mut err: *mut c_char = std::ptr::null_mut();
        if f(&mut err) == 0 {
            return Ok(());
        }
        let message = ffi::take_message(err);
        if self.backend == Backend::Gloo {
            // SAFETY: raw is live; the failed collective has returned. A peer blocked on a
            // message from this rank would otherwise wait for its whole timeout, and could
            // outlive the store this rank may serve.
            unsafe { ffi::qoq_dist_close_backend(self.raw) };
        }
        let peers = self.census();
        if self.serves_store {
            self.linger_for_census();
        }
        Err(DistError::Collective { rank: self.rank, op, message, peers })
    }

    /// The store dies with this process: before returning the error, wait (bounded) until
    /// every rank that joined the census has finished reading it.
    fn linger_for_census(&self) {
        let started = Instant::now();
        while started.elapsed() < CENSUS_WAIT + Duration::from_secs(2) {
            let pending = (0..self.world_size).filter(|&r| r != self.rank).any(|r| {
                let joined = matches!(self.store_get_if_present(&format!("alive/{r}")), Ok(Some(_)));
                joined && matches!(self.store_get_if_present(&format!("census/{r}")), Ok(None))
            });
            if !pending {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After a failed collective: says this rank is alive, waits a little for the others
    /// to say the same, and describes those that reported a failure or stayed silent.
    fn census(&self) -> String {
        let gone = format!(". The rendezvous store at {} is gone: rank 0 (which serves it) has exited", self.addr);
        if self.store_set(&format!("alive/{}", self.rank), b"1").is_err() {
            return gone;
        }
        let started = Instant::now();
        // The last complete look: rank 0 may exit (taking the store) while we wait.
        let mut last: Option<(Vec<String>, Vec<String>)> = None;
        while let Ok(seen) = self.look_at_peers() {
            let silent = seen.1.len();
            last = Some(seen);
            if silent == 0 || started.elapsed() >= CENSUS_WAIT {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.store_set(&format!("census/{}", self.rank), b"1");
        let Some((mut parts, silent)) = last else { return gone };
        if !silent.is_empty() {
            parts.push(format!(
                "no word from rank {} within {} s (exited, killed or hung)",
                silent.join(", rank "),
                started.elapsed().as_secs()
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(". {}", parts.join("; "))
        }
    }

    /// (failure reports of other ranks, ranks that have said nothing).
    fn look_at_peers(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let mut failed = Vec::new();
        let mut silent = Vec::new();
        for r in (0..self.world_size).filter(|&r| r != self.rank) {
            if let Some(msg) = self.store_get_if_present(&format!("failed/{r}"))? {
                failed.push(format!("rank {r} failed: {}", String::from_utf8_lossy(&msg)));
            } else if self.store_get_if_present(&format!("alive/{r}"))?.is_none() {
                silent.push(r.to_string());
            }
        }
        Ok((failed, silent))
    }

    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = CString::new(key).map_err(|e| e.to_string())?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: key and value live across the call.
        if unsafe { ffi::qoq_dist_store_set(self.raw, key.as_ptr(), value.as_ptr(), value.len(), &mut err) } != 0 {
            return Err(ffi::take_message(err));
        }
        Ok(())
    }

    fn store_get_if_present(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let ckey = CString::new(key).map_err(|e| e.to_string())?;
        let mut err: *mut c_char = std::ptr::null_mut();
        let mut present: c_int = 0;
        // SAFETY: pointers valid for the call.
        if unsafe { ffi::qoq_dist_store_check(self.raw, ckey.as_ptr(), &mut present, &mut err) } != 0 {
            return Err(ffi::take_message(err));
        }
        if present == 0 {
            return Ok(None);
        }
        let mut value: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        if unsafe { ffi::qoq_dist_store_get(self.raw, ckey.as_ptr(), &mut value, &mut len, &mut err) } != 0 {
            return Err(ffi::take_message(err));
        }
        // SAFETY: the shim malloc'ed `len` bytes at `value`; copied, then freed once.
        let out = unsafe { std::slice::from_raw_parts(value, len) }.to_vec();
        unsafe { ffi::qoq_dist_free_string(value as *mut c_char) };
        Ok(Some(out))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: made by qoq_dist_new, freed once.
            unsafe { ffi::qoq_dist_free(self.raw) };
        }
    }
}
