// Compiles csrc/shim.cpp against the libtorch tree's headers (LIBTORCH, from
// .cargo/config.toml / tools/setup.sh) and Gloo's headers (Debian's libgloo-dev, which
// tools/setup.sh installs: the torch wheel ships Gloo's code inside libtorch_cpu.so but
// not its headers). With the `cuda` feature, ProcessGroupNCCL too: QOQ_CUDA_INCLUDE lists
// the folders with nccl.h and the CUDA headers (tools/setup-cuda.sh sets it).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=QOQ_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=QOQ_GLOO_INCLUDE");
    let Ok(root) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run tools/setup.sh (it makes ./.libtorch, which .cargo/config.toml points LIBTORCH at)");
    };
    let root = PathBuf::from(root);
    let root = root.canonicalize().unwrap_or(root);
    let gloo = std::env::var("QOQ_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/include"));
    if !gloo.join("gloo/config.h").exists() {
        panic!("Gloo's headers are missing ({}/gloo/config.h): run tools/setup.sh (it installs Debian's libgloo-dev), or set QOQ_GLOO_INCLUDE", gloo.display());
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .opt_level(2);
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build.define("USE_C10D_NCCL", None).define("QOQ_WITH_NCCL", None).define("USE_CUDA", None);
        for dir in std::env::var("QOQ_CUDA_INCLUDE").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
            build.include(dir);
        }
    }
    build.compile("qoq_dist_shim");
    let lib = root.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for arg in
            ["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--as-needed", "-Wl,--allow-shlib-undefined"]
        {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
