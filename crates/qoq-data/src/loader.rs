//! The streaming loader the trainer, the evaluator and `inspect-data` share.
//!
//! It follows an [`EpochPlan`] window by window: for the rows of the current window that
//! belong to this rank it reads, per row group, only those rows and only the projected
//! columns, checks each row, and yields the good ones in plan order. Memory is bounded by
//! one window's rows of this rank.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::plan::{Cursor, EpochPlan, PlanOptions, RowRef, Unit};
use crate::sample::Sample;
use crate::schema::col;
use crate::shards::ShardSet;
use crate::validate::{check_ecg_for_encoder, check_sample, BadRow, Checks};

/// How to stream a shard set. `Default` is one unshuffled pass, rank 0 of 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Shuffle row groups and rows (per epoch).
    pub shuffle: bool,
    pub seed: u64,
    /// Row groups read together and shuffled as one window.
    pub window_row_groups: usize,
    /// Relative sampling weight per domain; every domain in the data must be listed.
    pub domain_weights: Option<BTreeMap<String, f64>>,
    /// Abort once more than this fraction of rows is bad.
    pub max_bad_fraction: f64,
    /// Stop after this many epochs (None: stream forever).
    pub epochs: Option<u64>,
    /// Columns to decode (empty: all). The required columns, `modality` and `split` are
    /// always read; boxes and masks bring the media columns they are checked against.
    pub columns: Vec<String>,
    /// Keep only rows of these splits (e.g. `["train"]`); None keeps every row.
    pub splits: Option<Vec<String>>,
    #[serde(skip)]
    pub rank: usize,
    #[serde(skip)]
    pub world_size: usize,
    #[serde(skip)]
    pub checks: Checks,
    /// Judge `max_bad_fraction` as rows stream (after 200 rows); off: only at each
    /// epoch's end (`inspect-data`, so one bad shard sorting first does not decide).
    #[serde(skip)]
    pub abort_early: bool,
    /// Also check each ECG against the ECG encoder's input ([`check_ecg_for_encoder`]): set
    /// by the trainer when the policy has an ECG path.
    #[serde(skip)]
    pub ecg_encoder: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            shuffle: false,
            seed: 0,
            window_row_groups: 4,
            domain_weights: None,
            max_bad_fraction: 0.01,
            epochs: Some(1),
            columns: Vec::new(),
            splits: None,
            rank: 0,
            world_size: 1,
            checks: Checks::Headers,
            abort_early: true,
            ecg_encoder: false,
        }
    }
}

/// Counts of rows seen and skipped, with the first bad rows for the report.
#[derive(Debug, Clone, Default)]
pub struct BadRowStats {
    pub seen: u64,
    pub bad: u64,
    /// The first [`Self::KEPT`] bad rows.
    pub examples: Vec<BadRow>,
}

impl BadRowStats {
    pub const KEPT: usize = 100;

    fn record(&mut self, bad: BadRow) {
        self.bad += 1;
        if self.examples.len() < Self::KEPT {
            self.examples.push(bad);
        }
    }
}

/// Streams [`Sample`]s of a shard set for one rank.
///
/// ```no_run
/// use qoq_data::{Loader, LoaderConfig};
/// let cfg = LoaderConfig { shuffle: true, seed: 1, epochs: None, ..Default::default() };
/// let mut loader = Loader::open("data/synthetic", cfg)?;
/// let batch: Vec<_> = loader.by_ref().take(8).collect::<Result<_, _>>()?;
/// let resume_here = loader.cursor(); // store it in the checkpoint
/// # Ok::<(), qoq_data::DataError>(())
/// ```
pub struct Loader {
    set: ShardSet,
    cfg: LoaderConfig,
    units: Vec<Unit>,
    /// Factor rho per unit (index into `units`) and row: domain mixing and the split
    /// filter (0 drops a row); empty when neither is set.
    repeat: Vec<Vec<f32>>,
    plan: EpochPlan,
    plan_epoch: Option<u64>,
    cursor: Cursor,
    buffer: VecDeque<(u64, Sample)>,
    stats: BadRowStats,
    /// Rows checked and rows found good in the current epoch since the last seek (an
    /// epoch whose rows are all bad is an error, not an endless loop).
    seen_in_epoch: u64,
    good_in_epoch: u64,
    /// Set after an error; `seek` clears it.
    failed: bool,
}

impl Loader {
    pub fn open(dir: impl AsRef<Path>, cfg: LoaderConfig) -> Result<Self> {
        Self::from_set(ShardSet::open(dir)?, cfg)
    }

    pub fn from_set(set: ShardSet, cfg: LoaderConfig) -> Result<Self> {
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(DataError::Config(format!("rank {} is not below world size {}", cfg.rank, cfg.world_size)));
        }
        if !(0.0..=1.0).contains(&cfg.max_bad_fraction) {
            return Err(DataError::Config(format!(
                "max_bad_fraction = {} must be within [0, 1]",
                cfg.max_bad_fraction
            )));
        }
        let mut cfg = cfg;
        for c in &cfg.columns {
            if !col::ALL.contains(&c.as_str()) {
                return Err(DataError::Config(format!(
                    "unknown column `{c}` in columns; known: {}",
                    col::ALL.join(", ")
                )));
            }
        }
        if !cfg.columns.is_empty() {
            // The row checks need these; boxes and masks are checked against the media.
            let mut needed: Vec<&str> = col::REQUIRED.to_vec();
            needed.extend([col::MODALITY, col::SPLIT]);
            if cfg.columns.iter().any(|c| [col::BOXES, col::BOX_LABELS, col::MASK].contains(&c.as_str())) {
                needed.extend([col::IMAGES, col::VIDEOS, col::BOXES, col::BOX_LABELS]);
            }
            for c in needed {
                if !cfg.columns.iter().any(|x| x == c) {
                    cfg.columns.push(c.to_string());
                }
            }
        }
        let units: Vec<Unit> = set
            .shards
            .iter()
            .enumerate()
            .flat_map(|(s, shard)| {
                shard.row_groups.iter().enumerate().map(move |(g, &rows)| Unit {
                    shard: s as u32,
                    row_group: g as u32,
                    rows: rows as u32,
                })
            })
            .collect();
        let repeat = row_factors(&set, &units, cfg.domain_weights.as_ref(), cfg.splits.as_deref())?;
        let fingerprint = fingerprint(&set, &cfg);
        let mut loader = Self {
            set,
            cfg,
            units,
            repeat,
            plan: EpochPlan { items: Vec::new(), window_ends: Vec::new() },
            plan_epoch: None,
            cursor: Cursor { fingerprint, ..Cursor::default() },
            buffer: VecDeque::new(),
            stats: BadRowStats::default(),
            seen_in_epoch: 0,
            good_in_epoch: 0,
            failed: false,
        };
        loader.ensure_plan(0)?;
        Ok(loader)
    }

    /// Continue from a cursor saved earlier with [`Loader::cursor`].
    pub fn seek(&mut self, cursor: Cursor) -> Result<()> {
        let fingerprint = self.cursor.fingerprint;
        if cursor.fingerprint != 0 && cursor.fingerprint != fingerprint {
            return Err(DataError::Config(
                "the cursor was saved with other shards, seed, ranks, window, weights or splits; \
                 resume with the settings it was saved with"
                    .into(),
            ));
        }
        self.buffer.clear();
        self.failed = false;
        self.seen_in_epoch = 0;
        self.good_in_epoch = 0;
        self.ensure_plan(cursor.epoch)?;
        let n = self.plan.rank_len(self.cfg.rank, self.cfg.world_size);
        if cursor.position > n {
            return Err(DataError::Config(format!(
                "cursor position {} is past the {n} samples of epoch {} for rank {} of {}; was it saved with other data or ranks?",
                cursor.position, cursor.epoch, self.cfg.rank, self.cfg.world_size
            )));
        }
        self.cursor = Cursor { fingerprint, ..cursor };
        Ok(())
    }

    /// The position of the next sample this loader will yield.
    pub fn cursor(&self) -> Cursor {
        match self.buffer.front() {
            Some(&(position, _)) => Cursor { position, ..self.cursor },
            None => self.cursor,
        }
    }

    /// Samples read ahead and held in memory (at most one window of this rank's rows).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn bad_rows(&self) -> &BadRowStats {
        &self.stats
    }

    pub fn shard_set(&self) -> &ShardSet {
        &self.set
    }

    /// Samples this rank gets per epoch (before bad rows are dropped).
    pub fn epoch_len(&self) -> u64 {
        self.plan.rank_len(self.cfg.rank, self.cfg.world_size)
    }

    fn ensure_plan(&mut self, epoch: u64) -> Result<()> {
        if self.plan_epoch == Some(epoch) {
            return Ok(());
        }
        let opts = PlanOptions {
            shuffle: self.cfg.shuffle,
            seed: self.cfg.seed,
            window_row_groups: self.cfg.window_row_groups,
        };
        let repeat = &self.repeat;
        self.plan = EpochPlan::build(&self.units, &opts, epoch, &|u, row| {
            repeat.get(u).map_or(1.0, |r| r[row as usize] as f64)
        });
        self.plan_epoch = Some(epoch);
        if self.plan.rank_len(self.cfg.rank, self.cfg.world_size) == 0 {
            return Err(DataError::invalid(
                &self.set.dir,
                format!(
                    "epoch {epoch} has {} rows, none for rank {} of {}; use more data or fewer ranks",
                    self.plan.items.len(),
                    self.cfg.rank,
                    self.cfg.world_size
                ),
            ));
        }
        Ok(())
    }

    /// Reads the rest of the current window into the buffer. Returns false at the end.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if let Some(max) = self.cfg.epochs {
                if self.cursor.epoch >= max {
                    return Ok(false);
                }
            }
            self.ensure_plan(self.cursor.epoch)?;
            let (rank, world) = (self.cfg.rank, self.cfg.world_size);
            if self.cursor.position >= self.plan.rank_len(rank, world) {
                self.check_bad_fraction(true)?;
                if self.seen_in_epoch > 0 && self.good_in_epoch == 0 {
                    return Err(DataError::invalid(
                        &self.set.dir,
                        format!(
                            "epoch {} gave rank {} no usable row; fix the data or the filters",
                            self.cursor.epoch, rank
                        ),
                    ));
                }
                self.seen_in_epoch = 0;
                self.good_in_epoch = 0;
                self.cursor = Cursor { epoch: self.cursor.epoch + 1, position: 0, ..self.cursor };
                continue;
            }
            let positions = self.plan.window_of(self.cursor.position, rank, world);
            let refs: Vec<(u64, RowRef)> =
                positions.clone().map(|p| (p, self.plan.items[EpochPlan::global_index(p, rank, world)])).collect();
            let mut rows = self.read_refs(&refs)?;
            let samples: Vec<Sample> = refs.iter().map(|&(_, r)| take_sample(&mut rows, r)).collect();
            // Checks decode media: run them on all cores.
            let (checks, ecg) = (self.cfg.checks, self.cfg.ecg_encoder);
            let verdicts: Vec<_> = samples
                .par_iter()
                .map(|s| {
                    check_sample(s, checks)?;
                    match &s.ecg {
                        Some(sig) if ecg => check_ecg_for_encoder(sig),
                        _ => Ok(()),
                    }
                })
                .collect();
            for (((p, r), sample), verdict) in refs.into_iter().zip(samples).zip(verdicts) {
                self.stats.seen += 1;
                self.seen_in_epoch += 1;
                match verdict {
                    Ok(()) => {
                        self.good_in_epoch += 1;
                        self.buffer.push_back((p, sample));
                    }
                    Err(reason) => self.stats.record(BadRow {
                        file: self.set.shards[r.shard as usize].path.clone(),
                        row: self.row_in_file(r),
                        id: sample.id.clone(),
                        reason,
                    }),
                }
            }
            self.cursor.position = positions.end;
            if self.cfg.abort_early {
                if let Err(e) = self.check_bad_fraction(false) {
                    self.buffer.clear();
                    return Err(e);
                }
            }
            if !self.buffer.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Reads the distinct rows behind `refs`, one row group at a time.
    fn read_refs(&self, refs: &[(u64, RowRef)]) -> Result<HashMap<RowRef, (usize, Sample)>> {
        let mut by_group: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        let mut uses: HashMap<RowRef, usize> = HashMap::new();
        for &(_, r) in refs {
            *uses.entry(r).or_default() += 1;
            by_group.entry((r.shard, r.row_group)).or_default().push(r.row as usize);
        }
        let columns: Vec<&str> = self.cfg.columns.iter().map(String::as_str).collect();
        let mut out = HashMap::with_capacity(uses.len());
        for ((shard, rg), mut rows) in by_group {
            rows.sort_unstable();
            rows.dedup();
            let samples = self.set.read_rows(shard as usize, rg as usize, &rows, &columns)?;
            for (row, sample) in rows.into_iter().zip(samples) {
                let r = RowRef { shard, row_group: rg, row: row as u32 };
                out.insert(r, (uses[&r], sample));
            }
        }
        Ok(out)
    }

    fn row_in_file(&self, r: RowRef) -> u64 {
        let groups = &self.set.shards[r.shard as usize].row_groups;
        groups[..r.row_group as usize].iter().sum::<usize>() as u64 + r.row as u64
    }

    fn check_bad_fraction(&self, epoch_end: bool) -> Result<()> {
        let s = &self.stats;
        // Judge early only on enough rows, so one bad row among the first few is no abort.
        if s.bad == 0 || (!epoch_end && s.seen < 200) {
            return Ok(());
        }
        let fraction = s.bad as f64 / s.seen as f64;
        if fraction > self.cfg.max_bad_fraction {
            return Err(DataError::TooManyBadRows {
                bad: s.bad,
                seen: s.seen,
                percent: 100.0 * fraction,
                max_fraction: self.cfg.max_bad_fraction,
                first: s.examples.first().map(|b| b.to_string()).unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Moves a row's sample out on its last use, clones it before (rows repeated by mixing).
fn take_sample(rows: &mut HashMap<RowRef, (usize, Sample)>, r: RowRef) -> Sample {
    let entry = rows.get_mut(&r).expect("every planned row was read");
    entry.0 -= 1;
    if entry.0 == 0 {
        rows.remove(&r).expect("present").1
    } else {
        entry.1.clone()
    }
}

impl Iterator for Loader {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.buffer.is_empty() {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    // One error, then None; `seek` to a saved cursor to try again.
                    self.failed = true;
                    self.buffer.clear();
                    return Some(Err(e));
                }
            }
        }
        self.buffer.pop_front().map(|(_, s)| Ok(s))
    }
}

/// Factor rho per unit and row: (w_d / sum w) * N / N_d from the `domain` column when
/// mixing, times 0 for rows whose `split` is filtered out. Empty when neither applies.
fn row_factors(
    set: &ShardSet,
    units: &[Unit],
    weights: Option<&BTreeMap<String, f64>>,
    splits: Option<&[String]>,
) -> Result<Vec<Vec<f32>>> {
    if weights.is_none() && splits.is_none() {
        return Ok(Vec::new());
    }
    let keep: Vec<Vec<bool>> = match splits {
        Some(splits) => set
            .read_string_column(col::SPLIT)?
            .into_iter()
            .map(|rows| rows.iter().map(|s| splits.contains(s)).collect())
            .collect(),
        None => set.shards.iter().map(|s| vec![true; s.num_rows()]).collect(),
    };
    let rho: Option<DomainRho> = match weights {
        Some(weights) => Some(domain_rho(set, weights, &keep)?),
        None => None,
    };
    let mut offsets = vec![0usize; set.shards.len()];
    Ok(units
        .iter()
        .map(|u| {
            let s = u.shard as usize;
            let start = offsets[s];
            offsets[s] += u.rows as usize;
            (start..start + u.rows as usize)
                .map(|i| {
                    let factor =
                        rho.as_ref().map_or(1.0, |(domains, rho)| rho.get(&domains[s][i]).copied().unwrap_or(0.0));
                    if keep[s][i] {
                        factor as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect())
}

/// Every row's domain (per shard) and each domain's rho.
type DomainRho = (Vec<Vec<String>>, BTreeMap<String, f64>);

/// The `domain` column and rho_d = (w_d / sum w) * N / N_d over the kept rows.
fn domain_rho(set: &ShardSet, weights: &BTreeMap<String, f64>, keep: &[Vec<bool>]) -> Result<DomainRho> {
    if weights.values().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(DataError::Config("domain_weights must be finite and >= 0".into()));
    }
    let domains = set.read_string_column(col::DOMAIN)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (rows, kept) in domains.iter().zip(keep) {
        for (d, &k) in rows.iter().zip(kept) {
            if k {
                *counts.entry(d.as_str()).or_default() += 1;
            }
        }
    }
    if let Some(d) = counts.keys().find(|d| !weights.contains_key(**d)) {
        return Err(DataError::Config(format!(
            "domain `{d}` occurs in {} but has no entry in domain_weights; add it (0 drops it)",
            set.dir.display()
        )));
    }
    let total_weight: f64 = counts.keys().map(|d| weights[*d]).sum();
    if total_weight <= 0.0 {
        return Err(DataError::Config("domain_weights give every domain in the data weight 0".into()));
    }
    let n: usize = counts.values().sum();
    let rho =
        counts.iter().map(|(d, &nd)| (d.to_string(), weights[*d] / total_weight * n as f64 / nd as f64)).collect();
    Ok((domains, rho))
}

/// FNV-1a over everything the order depends on.
fn fingerprint(set: &ShardSet, cfg: &LoaderConfig) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&[cfg.shuffle as u8]);
    for v in [cfg.seed, cfg.window_row_groups as u64, cfg.rank as u64, cfg.world_size as u64] {
        eat(&v.to_le_bytes());
    }
    for shard in &set.shards {
        eat(shard.path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        for rows in &shard.row_groups {
            eat(&(*rows as u64).to_le_bytes());
        }
    }
    for (d, w) in cfg.domain_weights.iter().flatten() {
        eat(d.as_bytes());
        eat(&w.to_le_bytes());
    }
    for s in cfg.splits.iter().flatten() {
        eat(s.as_bytes());
        eat(&[0]);
    }
    h.max(1)
}
