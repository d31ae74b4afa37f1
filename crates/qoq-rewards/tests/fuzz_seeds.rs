//! Replays the fuzz corpus (fuzz/seeds, plus any crashes saved under fuzz/artifacts) so
//! every input the fuzzer found interesting stays a regression test without nightly.

use std::path::Path;

#[test]
fn fuzz_seeds_keep_their_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "artifacts/score"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| qoq_rewards::testing::check_invariants(&data));
            assert!(outcome.is_ok(), "{} breaks an invariant", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 8, "the committed seed corpus is missing ({replayed} files)");
}
