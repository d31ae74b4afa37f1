//! Converters (see submodules).
