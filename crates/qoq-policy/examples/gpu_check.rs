//! Checks the CUDA build on a GPU node: CUDA is visible, preprocessed images reach the GPU
//! unchanged, and a matmul there agrees with the CPU. Prints one JSON line.
//!
//!     target/cuda/release/examples/gpu_check [IMAGES]

use qoq_data::preprocess::ImageProcessor;
use qoq_policy::VisionBatch;
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    if !tch::Cuda::is_available() {
        return Err(
            "CUDA is not available: is libtorch_cuda on the library path? (tools/setup-cuda.sh --print-env)".into()
        );
    }
    let device = Device::Cuda(0);
    let proc = ImageProcessor::default();
    let inputs: Vec<_> = (0..n)
        .map(|i| {
            let s = qoq_data::synthetic::generate(0, i);
            proc.prepare(&s).map(|m| m.images[0].clone())
        })
        .collect::<Result<_, _>>()?;
    let start = std::time::Instant::now();
    let gpu = VisionBatch::new(&inputs, device)?;
    tch::Cuda::synchronize(0);
    let upload_s = start.elapsed().as_secs_f64();
    let cpu = VisionBatch::new(&inputs, Device::Cpu)?;
    let same = gpu.pixel_values.to_device(Device::Cpu).equal(&cpu.pixel_values);
    let w = Tensor::randn([1536, 1024], (Kind::Float, Device::Cpu));
    let on_gpu = gpu.pixel_values.matmul(&w.to_device(device)).to_device(Device::Cpu);
    let on_cpu = cpu.pixel_values.matmul(&w);
    let rel = f64::try_from((on_gpu - &on_cpu).abs().max())? / f64::try_from(on_cpu.abs().max())?;
    println!(
        "{{\"cuda_devices\": {}, \"images\": {n}, \"rows\": {}, \"upload_s\": {upload_s:.4}, \"pixel_values_equal\": {same}, \"matmul_rel_err\": {rel:.2e}}}",
        tch::Cuda::device_count(),
        gpu.pixel_values.size()[0]
    );
    if !same || rel > 1e-3 {
        return Err("GPU results differ from the CPU".into());
    }
    Ok(())
}
