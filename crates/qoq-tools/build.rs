// The same as qoq-policy's: libtorch on the rpath of this crate's binaries and tests,
// libtorch_cuda linked explicitly under the `cuda` feature.
include!("../qoq-policy/build.rs");
