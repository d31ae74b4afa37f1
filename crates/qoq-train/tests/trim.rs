//! `release_freed_memory`, which the trainer calls after every step and phase, returns the pages of
//! freed heap blocks to the kernel even when live blocks sit between them (glibc trims
//! only the heap's top by itself). One test in its own binary: the resident size it reads
//! is the whole process's.

fn resident_mib() -> f64 {
    qoq_train::resident_mib().expect("VmRSS in /proc/self/status")
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_blocks_between_live_ones_leave_the_resident_set() {
    // 64 KiB blocks sit under glibc's default mmap threshold (128 KiB), so they come from
    // the heap; keeping every other one alive stops free() from trimming the heap's top.
    const BLOCK: usize = 64 << 10;
    const BLOCKS: usize = 3200; // 200 MiB
    let mut blocks: Vec<Option<Vec<u8>>> = (0..BLOCKS).map(|i| Some(vec![(i % 251) as u8 + 1; BLOCK])).collect();
    for (i, b) in blocks.iter_mut().enumerate() {
        if i % 2 == 1 {
            *b = None;
        }
    }
    // Turned off (`run.trim_freed_memory = false`), it leaves them resident.
    qoq_train::set_trim_freed_memory(false);
    let before = resident_mib();
    qoq_train::release_freed_memory();
    let after = resident_mib();
    assert!(before - after < 20.0, "trimming is off, yet resident went {before:.0} -> {after:.0} MiB");
    qoq_train::set_trim_freed_memory(true);
    let before = resident_mib();
    qoq_train::release_freed_memory();
    let after = resident_mib();
    // 100 MiB were freed; without the trim they stay resident.
    assert!(
        before - after > 60.0,
        "resident {before:.0} MiB before the trim, {after:.0} MiB after: the freed 100 MiB should have left"
    );
    // The live half is untouched.
    for (i, b) in blocks.iter().enumerate() {
        if let Some(b) = b {
            assert!(b[0] == (i % 251) as u8 + 1 && b[BLOCK - 1] == b[0], "live block {i} changed");
        }
    }
}
