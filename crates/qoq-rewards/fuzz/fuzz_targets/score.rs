//! Any bytes as (response NUL answer): scoring must not panic, stall, or leave [0, 1].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    qoq_rewards::testing::check_invariants(data);
});
