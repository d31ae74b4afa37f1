//! Put libtorch's lib folder on the rpath of this crate's tests and binaries, so they
//! run without LD_LIBRARY_PATH. LIBTORCH comes from .cargo/config.toml (see tools/setup.sh).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(root) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&root).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
