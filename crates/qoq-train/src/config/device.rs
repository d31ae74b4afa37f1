//! `run.device`: parsed, printed, and checked against what this build and machine have.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `run.device`: "cpu", "cuda" or "cuda:N".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceConfig {
    #[default]
    Cpu,
    /// "cuda": each rank takes the GPU of its local rank (GPU 0 for a single process).
    Cuda,
    /// "cuda:N": GPU N on every rank.
    CudaIndex(usize),
}

impl TryFrom<String> for DeviceConfig {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for DeviceConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceConfig::Cpu),
            "cuda" => Ok(DeviceConfig::Cuda),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceConfig::CudaIndex)
                .ok_or_else(|| format!("run.device must be \"cpu\", \"cuda\" or \"cuda:N\", got {s:?}")),
        }
    }
}

impl From<DeviceConfig> for String {
    fn from(d: DeviceConfig) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceConfig::Cpu => write!(f, "cpu"),
            DeviceConfig::Cuda => write!(f, "cuda"),
            DeviceConfig::CudaIndex(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceConfig {
    pub fn is_cuda(self) -> bool {
        !matches!(self, DeviceConfig::Cpu)
    }

    /// The device of the rank with `local_rank` on its machine.
    pub fn device(self, local_rank: usize) -> tch::Device {
        match self {
            DeviceConfig::Cpu => tch::Device::Cpu,
            DeviceConfig::Cuda => tch::Device::Cuda(local_rank),
            DeviceConfig::CudaIndex(n) => tch::Device::Cuda(n),
        }
    }

    /// [`Self::device`], checked against what this build of libtorch and this machine
    /// offer (a CPU-only libtorch has no CUDA at all), so that nothing panics inside tch.
    pub fn available(self, local_rank: usize) -> Result<tch::Device, String> {
        let device = self.device(local_rank);
        let tch::Device::Cuda(index) = device else { return Ok(device) };
        if !tch::Cuda::is_available() {
            return Err(format!(
                "run.device = \"{self}\", but CUDA is not available to this program (a CPU-only libtorch build, or no GPU visible). \
                 Build with CUDA (`bash tools/setup-cuda.sh`, which builds target/cuda/release/train) and run that binary on a GPU machine, \
                 or set run.device = \"cpu\""
            ));
        }
        let count = tch::Cuda::device_count().max(0) as usize;
        if index >= count {
            return Err(format!(
                "run.device = \"{self}\" needs GPU {index}, but this machine has {count} (cuda:0 to cuda:{}){}; set another run.device, or \"cpu\"",
                count.saturating_sub(1),
                if self == DeviceConfig::Cuda { " and \"cuda\" gives each local rank its own" } else { "" }
            ));
        }
        Ok(device)
    }
}
