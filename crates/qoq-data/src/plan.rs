//! The order in which an epoch visits rows, computed from shard metadata alone.
//!
//! 1. Units are (shard, row group). With shuffling they are permuted by (seed, epoch).
//! 2. Consecutive units form windows of `window_row_groups`; rows are shuffled within a
//!    window. Reading one window touches only its row groups, so memory stays bounded
//!    while rows of different shards and row groups are interleaved.
//! 3. Optional per-domain mixing: each row is repeated floor(rho_d) times plus once more
//!    with probability frac(rho_d), where rho_d = (w_d / sum w) * N / N_d, so the epoch
//!    keeps about N rows with each domain's share following its weight. The copies of a
//!    row are spread over evenly spaced windows. A row with rho = 0 (a domain of weight 0,
//!    or a split that is filtered out) is left out.
//! 4. Rank r of W takes global positions r, r + W, r + 2W, ...: disjoint, and together
//!    complete.
//!
//! The plan depends only on (seed, epoch, metadata), so a [`Cursor`] of (epoch, position)
//! is enough to resume at exactly the next sample.

use serde::{Deserialize, Serialize};

use crate::rng;

const TAG_UNITS: u64 = 1;
const TAG_WINDOW: u64 = 2;
const TAG_MIX: u64 = 3;

/// Where a rank's stream stands: the next sample is `position` (counting this rank's
/// samples from 0) of epoch `epoch`. Serialisable, for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: u64,
    /// Hash of everything the order depends on (shards, row groups, seed, ranks, window,
    /// weights, splits); a loader refuses a cursor made under other settings. 0: unchecked.
    #[serde(default)]
    pub fingerprint: u64,
}

/// One row: shard index, row group index within the shard, row within the row group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowRef {
    pub shard: u32,
    pub row_group: u32,
    pub row: u32,
}

/// A row group and its row count.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub shard: u32,
    pub row_group: u32,
    pub rows: u32,
}

/// How an epoch is ordered.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub shuffle: bool,
    pub seed: u64,
    pub window_row_groups: usize,
}

/// The global order of one epoch, cut into windows.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub items: Vec<RowRef>,
    /// End (exclusive) of each window in `items`.
    pub window_ends: Vec<usize>,
}

impl EpochPlan {
    /// Builds epoch `epoch`'s plan. `repeat(unit_index, row)` gives a row's mixing factor
    /// rho (1.0 without mixing).
    pub fn build(units: &[Unit], opts: &PlanOptions, epoch: u64, repeat: &dyn Fn(usize, u32) -> f64) -> Self {
        let mut order: Vec<usize> = (0..units.len()).collect();
        if opts.shuffle {
            rng::shuffle(&mut rng::stream(opts.seed, &[TAG_UNITS, epoch]), &mut order);
        }
        // Windows bound memory with or without shuffling: the loader reads one at a time.
        let chunks: Vec<&[usize]> = order.chunks(opts.window_row_groups.max(1)).collect();
        let n_windows = chunks.len();
        let mut windows: Vec<Vec<RowRef>> = vec![Vec::new(); n_windows];
        for (w, chunk) in chunks.iter().enumerate() {
            let mut mix = rng::stream(opts.seed, &[TAG_MIX, epoch, w as u64]);
            for &u in *chunk {
                let unit = units[u];
                for row in 0..unit.rows {
                    let rho = repeat(u, row);
                    let whole = rho.floor();
                    let copies = whole as usize + usize::from(rng::unit(&mut mix) < rho - whole);
                    // Copies of an upsampled row go to evenly spaced windows, so one window
                    // (and one batch) does not hold the same prompt many times over.
                    for k in 0..copies {
                        let target = (w + k * n_windows / copies.max(1)) % n_windows;
                        windows[target].push(RowRef { shard: unit.shard, row_group: unit.row_group, row });
                    }
                }
            }
        }
        let mut items = Vec::with_capacity(windows.iter().map(Vec::len).sum());
        let mut window_ends = Vec::new();
        for (w, mut window) in windows.into_iter().enumerate() {
            if window.is_empty() {
                continue;
            }
            if opts.shuffle {
                rng::shuffle(&mut rng::stream(opts.seed, &[TAG_WINDOW, epoch, w as u64]), &mut window);
            }
            items.extend(window);
            window_ends.push(items.len());
        }
        Self { items, window_ends }
    }

    /// Number of samples rank `rank` of `world` gets in this epoch.
    pub fn rank_len(&self, rank: usize, world: usize) -> u64 {
        let n = self.items.len();
        if n <= rank {
            0
        } else {
            ((n - rank).div_ceil(world)) as u64
        }
    }

    /// The global index of rank `rank`'s `position`-th sample.
    pub fn global_index(position: u64, rank: usize, world: usize) -> usize {
        position as usize * world + rank
    }

    /// The range of this rank's positions that fall in the window holding `position`.
    pub fn window_of(&self, position: u64, rank: usize, world: usize) -> std::ops::Range<u64> {
        let g = Self::global_index(position, rank, world);
        let w = self.window_ends.partition_point(|&end| end <= g);
        let start = if w == 0 { 0 } else { self.window_ends[w - 1] };
        let end = self.window_ends[w];
        // First position p with p*world + rank >= start, and first with >= end.
        let first = |bound: usize| -> u64 { (bound.saturating_sub(rank)).div_ceil(world) as u64 };
        first(start).max(position)..first(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn units() -> Vec<Unit> {
        vec![
            Unit { shard: 0, row_group: 0, rows: 5 },
            Unit { shard: 0, row_group: 1, rows: 3 },
            Unit { shard: 1, row_group: 0, rows: 7 },
            Unit { shard: 2, row_group: 0, rows: 4 },
        ]
    }

    fn opts(shuffle: bool) -> PlanOptions {
        PlanOptions { shuffle, seed: 11, window_row_groups: 2 }
    }

    #[test]
    fn unshuffled_plan_is_file_order() {
        let p = EpochPlan::build(&units(), &opts(false), 0, &|_, _| 1.0);
        assert_eq!(p.items.len(), 19);
        assert!(p.items.windows(2).all(|w| w[0] < w[1]));
        // Two row groups per window: 5 + 3 rows, then 7 + 4.
        assert_eq!(p.window_ends, vec![8, 19]);
    }

    #[test]
    fn shuffled_plan_is_a_permutation_that_changes_with_epoch() {
        let a = EpochPlan::build(&units(), &opts(true), 0, &|_, _| 1.0);
        let b = EpochPlan::build(&units(), &opts(true), 1, &|_, _| 1.0);
        let sorted = |p: &EpochPlan| {
            let mut v = p.items.clone();
            v.sort();
            v
        };
        assert_eq!(sorted(&a), EpochPlan::build(&units(), &opts(false), 0, &|_, _| 1.0).items);
        assert_eq!(sorted(&a), sorted(&b));
        assert_ne!(a.items, b.items);
        assert_eq!(a.items, EpochPlan::build(&units(), &opts(true), 0, &|_, _| 1.0).items);
        // Windows hold whole row groups: each window's rows come from at most 2 units.
        let mut start = 0;
        for &end in &a.window_ends {
            let groups: std::collections::BTreeSet<_> =
                a.items[start..end].iter().map(|r| (r.shard, r.row_group)).collect();
            assert!(groups.len() <= 2);
            start = end;
        }
    }

    #[test]
    fn ranks_are_disjoint_and_complete() {
        let p = EpochPlan::build(&units(), &opts(true), 3, &|_, _| 1.0);
        for world in 1..=4 {
            let mut seen = BTreeMap::new();
            let mut total = 0;
            for rank in 0..world {
                let n = p.rank_len(rank, world);
                total += n;
                let mut pos = 0;
                while pos < n {
                    let range = p.window_of(pos, rank, world);
                    assert_eq!(range.start, pos);
                    assert!(range.end > range.start);
                    for q in range.clone() {
                        let g = EpochPlan::global_index(q, rank, world);
                        assert!(seen.insert(g, rank).is_none());
                    }
                    pos = range.end;
                }
            }
            assert_eq!(total as usize, p.items.len());
            assert_eq!(seen.len(), p.items.len());
        }
    }

    #[test]
    fn upsampled_copies_land_in_different_windows() {
        let units: Vec<Unit> = (0..8).map(|g| Unit { shard: 0, row_group: g, rows: 4 }).collect();
        // Row 0 of row group 0 repeated 4 times; all else once; 2 row groups per window.
        let p = EpochPlan::build(&units, &opts(true), 0, &|u, r| if u == 0 && r == 0 { 4.0 } else { 1.0 });
        let target = RowRef { shard: 0, row_group: 0, row: 0 };
        let mut start = 0;
        let mut per_window = Vec::new();
        for &end in &p.window_ends {
            per_window.push(p.items[start..end].iter().filter(|r| **r == target).count());
            start = end;
        }
        assert_eq!(per_window.iter().sum::<usize>(), 4);
        assert!(per_window.iter().all(|&c| c <= 1), "{per_window:?}");
    }

    #[test]
    fn mixing_factors_follow_weights() {
        let units = vec![Unit { shard: 0, row_group: 0, rows: 1000 }, Unit { shard: 1, row_group: 0, rows: 1000 }];
        // Unit 0 upsampled x1.5, unit 1 downsampled x0.5.
        let p = EpochPlan::build(&units, &opts(true), 0, &|u, _| if u == 0 { 1.5 } else { 0.5 });
        let from0 = p.items.iter().filter(|r| r.shard == 0).count();
        let from1 = p.items.len() - from0;
        assert!((1400..1600).contains(&from0), "{from0}");
        assert!((430..570).contains(&from1), "{from1}");
    }
}
