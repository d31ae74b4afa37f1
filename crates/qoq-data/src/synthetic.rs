//! Synthetic set.
