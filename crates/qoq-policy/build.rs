// Put libtorch's lib folder on the rpath of this crate's tests and binaries, so they
// run without LD_LIBRARY_PATH. LIBTORCH comes from .cargo/config.toml (see tools/setup.sh).
// With the `cuda` feature, link libtorch_cuda explicitly: nothing in our code references
// it, so --as-needed would drop it and CUDA would never register (tools/setup-cuda.sh).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&root).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        // The link .libtorch may be re-pointed without LIBTORCH changing.
        println!("cargo:rerun-if-changed={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for arg in
            ["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--as-needed", "-Wl,--allow-shlib-undefined"]
        {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
