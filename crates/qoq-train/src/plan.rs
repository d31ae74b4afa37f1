//! A memory plan: every term a run allocates on one rank, phase by phase, from the run
//! configuration and the model's `config.json` alone (no weights, tokenizer, data or
//! device), so a run can be sized for a GPU from a laptop: `train CONFIG --plan
//! [--world-size N] [--device-memory-gb G]`.
//!
//! Each term is modelled on the code that allocates it (the file is named beside it). The
//! peak is the largest sum over the phases of what is alive together in that phase: a
//! rollout's KV cache and an update's activations never coexist. docs/memory.md explains
//! the terms and compares the plan with measured peaks.

pub mod formulas;
mod shape;
mod terms;

use std::fmt;
use std::path::Path;

use qoq_policy::Family;

pub use shape::{Counts, ModelShape, TextShape, VisionShape};
pub use terms::Sizes;

use crate::config::{Dtype, TrainConfig};
use crate::TrainError;

pub const GIB: f64 = (1u64 << 30) as f64;

/// A stretch of a step during which the same tensors are alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Generation's prompt pass (KV cache filled for the prompts).
    Prefill,
    /// Generation's token loop (the cache of G samples per prompt, growing).
    Decode,
    /// old_log_prob / ref: log-probs of the rollouts without a graph.
    Scoring,
    /// An RL micro-batch's backward: the head's chunks, the decoder layers, the input stage.
    UpdateHead,
    UpdateLayers,
    UpdateInput,
    /// The same for an SFT micro-batch.
    SftHead,
    SftLayers,
    SftInput,
    /// AdamW (gradient norm, moments, the update).
    Optimizer,
    /// Writing a checkpoint.
    Checkpoint,
    /// Validation's generation (prompt pass or token loop, whichever is larger).
    Validation,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
            Phase::Scoring => "scoring",
            Phase::UpdateHead => "update:head",
            Phase::UpdateLayers => "update:layers",
            Phase::UpdateInput => "update:input",
            Phase::SftHead => "sft:head",
            Phase::SftLayers => "sft:layers",
            Phase::SftInput => "sft:input",
            Phase::Optimizer => "optimizer",
            Phase::Checkpoint => "checkpoint",
            Phase::Validation => "validation",
        }
    }
}

/// `train` runs with glibc's `MALLOC_MMAP_THRESHOLD_` at 32 MiB (train.rs
/// keep_freed_memory): larger blocks are mapped and unmapped, smaller ones come from the
/// heap, which keeps its high-water mark (it trims only its top, beyond 256 MiB free).
pub const CPU_MMAP_THRESHOLD: f64 = (32u64 << 20) as f64;

/// One allocation of the plan: `bytes` alive in each of `phases` (empty: in all of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub name: String,
    pub phases: Vec<Phase>,
    pub bytes: f64,
    /// Where the figure comes from (the formula, the code).
    pub note: String,
    /// Bytes of the term's largest single tensor (decides heap or mapping on CPU).
    pub block: f64,
    /// On CPU: held in glibc's heap, so counted in its high-water term instead.
    pub in_heap: bool,
}

impl Term {
    fn new(name: impl Into<String>, phases: &[Phase], bytes: f64, note: impl Into<String>) -> Self {
        Self { name: name.into(), phases: phases.to_vec(), bytes, note: note.into(), block: 0.0, in_heap: false }
    }

    /// The same term, whose largest tensor takes `bytes`.
    fn block(mut self, bytes: f64) -> Self {
        self.block = bytes;
        self
    }

    pub fn persistent(&self) -> bool {
        self.phases.is_empty()
    }

    fn alive_in(&self, phase: Phase) -> bool {
        self.persistent() || self.phases.contains(&phase)
    }
}

/// The plan of one rank (or of several ranks that allocate alike).
#[derive(Debug, Clone, PartialEq)]
pub struct RankPlan {
    /// "rank 0", "ranks 1-7", "ranks 0-7".
    pub ranks: String,
    pub terms: Vec<Term>,
    /// The phases this run goes through.
    pub phases: Vec<Phase>,
}

impl RankPlan {
    /// Bytes alive together in `phase`.
    pub fn phase_bytes(&self, phase: Phase) -> f64 {
        self.terms.iter().filter(|t| t.alive_in(phase) && !t.in_heap).map(|t| t.bytes).sum()
    }

    /// On CPU: glibc's heap serves every block under [`CPU_MMAP_THRESHOLD`] and keeps its
    /// high-water mark, so what one phase leaves there is still resident in the next
    /// (measured: docs/memory.md). The transient terms made of such blocks move into one
    /// term alive in every phase: the largest sum of them in any phase.
    fn keep_heap_high_water(&mut self) {
        let small = |t: &Term| !t.persistent() && t.block < CPU_MMAP_THRESHOLD;
        let in_phase = |p: Phase| self.terms.iter().filter(|t| small(t) && t.alive_in(p)).map(|t| t.bytes).sum();
        let (phase, high) = self.phases.iter().map(|&p| (p, in_phase(p))).fold((Phase::Optimizer, 0.0), |best, x| {
            if x.1 > best.1 {
                x
            } else {
                best
            }
        });
        for t in self.terms.iter_mut().filter(|t| small(t)) {
            t.in_heap = true;
        }
        let note =
            format!("glibc keeps the heap's peak: blocks under 32 MiB of {} (the terms marked heap)", phase.name());
        self.terms.push(Term::new("CPU heap high-water", &[], high, note));
    }

    /// The phase with the most bytes alive, and those bytes.
    pub fn peak(&self) -> (Phase, f64) {
        self.phases.iter().map(|&p| (p, self.phase_bytes(p))).fold((Phase::Optimizer, 0.0), |best, x| {
            if x.1 > best.1 {
                x
            } else {
                best
            }
        })
    }
}

/// The plan of a run: what it is, and each kind of rank.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub header: Vec<String>,
    pub ranks: Vec<RankPlan>,
}

impl MemoryPlan {
    /// The largest peak of any rank, in bytes.
    pub fn peak_bytes(&self) -> f64 {
        self.ranks.iter().map(|r| r.peak().1).fold(0.0, f64::max)
    }

    /// The last line of the printed plan.
    pub fn peak_line(&self) -> String {
        format!("peak per rank: {:.2} GiB", self.peak_bytes() / GIB)
    }

    /// The error when the peak exceeds `limit_gib`: names both.
    pub fn check_fits(&self, limit_gib: f64) -> Result<(), String> {
        let peak = self.peak_bytes() / GIB;
        if peak > limit_gib {
            // The first rank kind with the peak (rank 0 on a tie).
            let worst = self.ranks.iter().fold(None, |best: Option<&RankPlan>, r| match best {
                Some(b) if b.peak().1 >= r.peak().1 => Some(b),
                _ => Some(r),
            });
            let (ranks, phase) = worst.map(|r| (r.ranks.as_str(), r.peak().0.name())).unwrap_or(("", ""));
            return Err(format!(
                "the plan does not fit: peak per rank {peak:.2} GiB ({ranks}, phase {phase}) exceeds --device-memory-gb {limit_gib} GiB"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.header {
            writeln!(f, "{line}")?;
        }
        for rank in &self.ranks {
            writeln!(f)?;
            writeln!(f, "{}:", rank.ranks)?;
            writeln!(f, "  {:<44} {:>9}  {:<28} note", "term", "GiB", "alive in")?;
            for t in &rank.terms {
                let mut phases = if t.persistent() { "every phase".to_string() } else { phase_list(&t.phases) };
                if t.in_heap {
                    phases.push_str(" (heap)");
                }
                writeln!(f, "  {:<44} {:>9.3}  {:<28} {}", t.name, t.bytes / GIB, phases, t.note)?;
            }
            let (worst, _) = rank.peak();
            let sums: Vec<String> = rank
                .phases
                .iter()
                .map(|&p| {
                    let mark = if p == worst { "*" } else { "" };
                    format!("{}{mark} {:.2}", p.name(), rank.phase_bytes(p) / GIB)
                })
                .collect();
            writeln!(f, "  phases (GiB alive together; * the peak): {}", sums.join(", "))?;
            writeln!(f, "  peak of {}: {:.2} GiB in {}", rank.ranks, rank.peak().1 / GIB, worst.name())?;
        }
        writeln!(f)?;
        write!(f, "{}", self.peak_line())
    }
}

/// Reads the run configuration at `path` (with its `base` files) and the `config.json` of
/// its `model.path`, nothing else, and plans the run on `world` ranks (default 1).
pub fn plan_file(path: &Path, world: Option<usize>) -> Result<MemoryPlan, TrainError> {
    let config = TrainConfig::parse_file(path)?;
    let named = |e: String| TrainError::Config(format!("{}: {e}", path.display()));
    config.check(false).map_err(named)?;
    let world = world.unwrap_or(1);
    if world == 0 {
        return Err(named("the world size must be at least 1".into()));
    }
    config.check_world(world).map_err(named)?;
    let mut model = ModelShape::from_dir(&config.model.path)?;
    // model.ecg_encoder gives the run an ECG path: a random one at its sizes, a
    // `.safetensors` checkpoint at its header's, a `.pth` (not read here) at ECG-JEPA's.
    if let (Some(init), None) = (&config.model.ecg_encoder, &model.ecg) {
        let from_file = match init.as_str() {
            "random" => None,
            path => qoq_policy::ecg::encoder_sizes(Path::new(path)).map_err(|e| named(e.to_string()))?,
        };
        model.ecg = Some(from_file.or(config.model.ecg_encoder_sizes).unwrap_or_default());
    }
    let mut plan = plan(&config, &model, world);
    plan.header.insert(0, format!("memory plan for {} (model {})", path.display(), config.model.path.display()));
    Ok(plan)
}

/// The plan of `config` for `model` on `world` ranks.
pub fn plan(config: &TrainConfig, model: &ModelShape, world: usize) -> MemoryPlan {
    let sizes = Sizes::new(config, model, world);
    let counts = model.counts();
    let freeze = &config.model.freeze;
    let trainable = counts.trainable(freeze);
    let dtype = match config.model.dtype {
        Dtype::Float32 => "float32",
        Dtype::Bfloat16 => "bfloat16",
    };
    let device = config.run.device;
    let frozen: Vec<&str> = freeze.iter().map(|g| g.name()).collect();
    let header = vec![
        format!(
            "{} ({}): {} parameters, {} trainable{}; {dtype}; device {device}; {world} rank(s){}",
            family_name(model.family),
            model.family.model_type(),
            thousands(counts.total()),
            thousands(trainable),
            if frozen.is_empty() { String::new() } else { format!(" (frozen: {})", frozen.join(", ")) },
            match config.distributed.sharding() {
                crate::config::Sharding::None => "",
                crate::config::Sharding::Optimizer if world <= 1 => "",
                crate::config::Sharding::Optimizer => ", sharding: optimizer",
                crate::config::Sharding::Gradients => ", sharding: gradients",
                crate::config::Sharding::Full => ", sharding: full",
            },
        ),
        format!(
            "  vision tower {}, merger(s) {}, language model {}",
            thousands(counts.vision_tower),
            thousands(counts.merger),
            thousands(counts.llm)
        ),
        sizes.describe(),
    ];
    let main = terms::rank_terms(config, model, &sizes, true);
    let mut ranks = rank_plans(&sizes, main, || terms::rank_terms(config, model, &sizes, false), world);
    if config.run.device == crate::config::DeviceConfig::Cpu {
        ranks.iter_mut().for_each(RankPlan::keep_heap_high_water);
    }
    MemoryPlan { header, ranks }
}

/// One plan per kind of rank: rank 0 alone when the others differ from it.
fn rank_plans(sizes: &Sizes, main: Vec<Term>, other: impl Fn() -> Vec<Term>, world: usize) -> Vec<RankPlan> {
    let mut ranks = Vec::new();
    let last = world.saturating_sub(1);
    if world > 1 {
        let other = other();
        if other == main {
            ranks.push(RankPlan { ranks: format!("ranks 0-{last}"), terms: main, phases: sizes.phases.clone() });
        } else {
            let name = if last == 1 { "rank 1".to_string() } else { format!("ranks 1-{last}") };
            ranks.push(RankPlan { ranks: "rank 0".into(), terms: main, phases: sizes.phases.clone() });
            ranks.push(RankPlan { ranks: name, terms: other, phases: sizes.phases.clone() });
        }
    } else {
        ranks.push(RankPlan { ranks: "rank 0".into(), terms: main, phases: sizes.phases.clone() });
    }
    ranks
}

/// `update:head, update:layers` as `update:head+layers`.
fn phase_list(phases: &[Phase]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut last_prefix = "";
    for p in phases {
        let name = p.name();
        match name.split_once(':') {
            Some((prefix, rest)) if prefix == last_prefix => {
                if let Some(l) = out.last_mut() {
                    l.push('+');
                    l.push_str(rest);
                }
            }
            Some((prefix, _)) => {
                last_prefix = prefix;
                out.push(name.to_string());
            }
            None => {
                last_prefix = "";
                out.push(name.to_string());
            }
        }
    }
    out.join(",")
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Qwen3Vl => "Qwen3-VL",
        Family::Qwen25Vl => "Qwen2.5-VL",
    }
}

/// `8767123696` as `8,767,123,696`.
fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use qoq_policy::{ModuleGroup, Qwen3VLConfig};

    use super::*;

    /// A run on the tiny model: 8 prompts x G 4, responses of 64 tokens after 128.
    fn config(model: &str, extra: &str) -> TrainConfig {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[run]\noutput_dir = \"out\"\ndevice = \"cuda\"\n[model]\npath = \"m\"\n{model}\n[data]\nshards = \"s\"\n\
             [prompt]\nmax_prompt_tokens = 128\n[rl]\nsteps = 1\nprompts_per_step = 8\nprompts_per_update = 8\n\
             samples_per_prompt = 4\nmicro_batch = 4\ngeneration_batch = 8\nmax_new_tokens = 64\n{extra}"
        );
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).unwrap();
        TrainConfig::parse_file(&path).unwrap()
    }

    fn tiny() -> ModelShape {
        ModelShape::qwen3_vl(&Qwen3VLConfig::tiny())
    }

    fn term<'a>(plan: &'a MemoryPlan, rank: usize, name: &str) -> &'a Term {
        plan.ranks[rank].terms.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no term {name}"))
    }

    #[test]
    fn the_peak_is_the_largest_phase_not_the_sum_of_all_terms() {
        let plan = plan(&config("", ""), &tiny(), 1);
        let rank = &plan.ranks[0];
        let cache = term(&plan, 0, "KV arena: rollout slots");
        let layer = term(&plan, 0, "RL update: one layer recomputed + backward");
        assert!(cache.bytes > 0.0 && layer.bytes > 0.0);
        // The cache is alive while decoding only, a layer's activations in the update only.
        assert_eq!(
            (cache.phases.as_slice(), layer.phases.as_slice()),
            ([Phase::Decode].as_slice(), [Phase::UpdateLayers].as_slice())
        );
        let params = term(&plan, 0, "parameters").bytes;
        assert!(rank.phase_bytes(Phase::Decode) >= params + cache.bytes);
        assert!(rank.phase_bytes(Phase::UpdateLayers) >= params + layer.bytes);
        let everything: f64 = rank.terms.iter().map(|t| t.bytes).sum();
        let (_, peak) = rank.peak();
        assert!(peak < everything);
        assert_eq!(peak, rank.phases.iter().map(|&p| rank.phase_bytes(p)).fold(0.0, f64::max));
        assert!(!rank.phases.contains(&Phase::SftHead) && !rank.phases.contains(&Phase::Validation));
    }

    #[test]
    fn the_kv_arena_is_bounded_by_the_slots_not_the_rollout_batch() {
        let arena = |extra: &str| {
            let mut c = config("", extra.trim_end_matches("\nmore prompts"));
            if extra.ends_with("more prompts") {
                (c.rl.prompts_per_step, c.rl.prompts_per_update) = (64, 64);
            }
            (term(&plan(&c, &tiny(), 1), 0, "KV arena: rollout slots").bytes, Sizes::new(&c, &tiny(), 1).slots)
        };
        // Default: generation_batch 8 x G 4 = 32 slots of 128 + 64 positions.
        let t = tiny().text;
        let per_slot = 2.0 * (t.layers * t.kv_heads * t.head_dim) as f64 * 192.0 * 4.0;
        assert_eq!(arena(""), (32.0 * per_slot, 32));
        // More prompts per step, the same slots: the same arena.
        let more = "rollout_slots = 12\nmore prompts";
        assert_eq!(arena(more), (12.0 * per_slot, 12));
        assert_eq!(arena("rollout_slots = 12"), arena(more));
        // A budget caps the slots; with both the fewer win.
        let budget = 5.5 * per_slot / (1u64 << 30) as f64;
        assert_eq!(arena(&format!("kv_cache_gb = {budget}")).1, 5);
        assert_eq!(arena(&format!("kv_cache_gb = {budget}\nrollout_slots = 4")).1, 4);
    }

    #[test]
    fn parameters_moments_and_gradients_follow_dtype_freezing_and_sharding() {
        let counts = tiny().counts();
        let (total, trainable) = (counts.total() as f64, counts.trainable(&[ModuleGroup::VisionTower]) as f64);
        let fp32 = plan(&config("freeze = [\"vision_tower\"]", ""), &tiny(), 1);
        assert_eq!(term(&fp32, 0, "parameters").bytes, total * 4.0);
        assert_eq!(term(&fp32, 0, "AdamW moments").bytes, 2.0 * trainable * 4.0);
        assert_eq!(term(&fp32, 0, "gradients").bytes, trainable * 4.0);
        assert_eq!(term(&fp32, 0, "fp32 master weights").bytes, 0.0);
        let bf16 = plan(&config("dtype = \"bfloat16\"", ""), &tiny(), 1);
        assert_eq!(term(&bf16, 0, "parameters").bytes, total * 2.0);
        assert_eq!(term(&bf16, 0, "fp32 master weights").bytes, total * 4.0);
        assert_eq!(term(&bf16, 0, "gradients").bytes, total * 6.0);
        let sharded = plan(&config("dtype = \"bfloat16\"", "[distributed]\nsharded_optimizer = true\n"), &tiny(), 4);
        assert_eq!(term(&sharded, 0, "AdamW moments").bytes, 2.0 * total * 4.0 / 4.0);
        // precision.rs keeps every master on every rank.
        assert_eq!(term(&sharded, 0, "fp32 master weights").bytes, total * 4.0);
        // Rank 0 alone assembles the full moments for the checkpoint.
        assert_eq!(sharded.ranks.len(), 2);
        assert_eq!(term(&sharded, 0, "full moments on rank 0").bytes, 2.0 * total * 4.0);
        assert!(sharded.ranks[1].terms.iter().all(|t| t.name != "full moments on rank 0"));
    }

    #[test]
    fn the_reference_model_is_planned_when_the_trainer_loads_one() {
        let total = tiny().counts().total() as f64;
        let none = plan(&config("", "[algorithm]\nkl_coef = 0.0\n"), &tiny(), 1);
        assert_eq!(term(&none, 0, "reference model").bytes, 0.0);
        let kl = plan(&config("", "[algorithm]\nkl_coef = 1e-4\n"), &tiny(), 1);
        assert_eq!(term(&kl, 0, "reference model").bytes, total * 4.0);
        let damping = plan(&config("", "[algorithm]\nkl_coef = 0.0\nkl_damping = true\n"), &tiny(), 1);
        assert_eq!(term(&damping, 0, "reference model").bytes, total * 4.0);
        for name in ["gathered layers", "gathered model for rollouts"] {
            assert_eq!(term(&kl, 0, name).bytes, 0.0);
        }
    }

    #[test]
    fn sharded_gradients_and_parameters_divide_the_model_state() {
        let shape = tiny();
        let total = shape.counts().total() as f64;
        let unit = shape.largest_unit(&[]) as f64;
        assert!(unit > shape.layer_params() as f64 && unit < total);
        let grads = plan(&config("dtype = \"bfloat16\"", "[distributed]\nsharding = \"gradients\"\n"), &tiny(), 4);
        assert_eq!(term(&grads, 0, "parameters").bytes, total * 2.0);
        assert_eq!(term(&grads, 0, "fp32 master weights").bytes, total * 4.0 / 4.0);
        assert_eq!(term(&grads, 0, "gradients").bytes, total * 4.0 / 4.0);
        assert_eq!(term(&grads, 0, "AdamW moments").bytes, 2.0 * total * 4.0 / 4.0);
        assert_eq!(term(&grads, 0, "gathered layers").bytes, unit * (2.0 + 4.0));
        assert_eq!(term(&grads, 0, "gathered model for rollouts").bytes, 0.0);
        let full = plan(&config("dtype = \"bfloat16\"", "[distributed]\nsharding = \"full\"\n"), &tiny(), 4);
        assert_eq!(term(&full, 0, "parameters").bytes, 0.0);
        assert_eq!(term(&full, 0, "gathered layers").bytes, unit * (2.0 * 2.0 + 4.0));
        assert_eq!(term(&full, 0, "gathered model for rollouts").bytes, total * 2.0);
        // Every rank writes its own units: nothing whole on rank 0.
        assert!(full.ranks.iter().all(|r| r.terms.iter().all(|t| t.name != "full moments on rank 0")));
        let (_, full_peak) = full.ranks[0].peak();
        let (_, grads_peak) = grads.ranks[0].peak();
        assert!(full_peak < grads_peak, "{full_peak} vs {grads_peak}");
    }

    #[test]
    fn recomputation_keeps_layer_inputs_instead_of_every_layer() {
        let on = plan(&config("", ""), &tiny(), 1);
        let off = plan(&config("", "[memory]\nrecompute = false\n"), &tiny(), 1);
        let layers = |p: &MemoryPlan| p.ranks[0].phase_bytes(Phase::UpdateLayers);
        assert!(layers(&off) > layers(&on));
        assert!(off.ranks[0].terms.iter().any(|t| t.name == "RL update: every layer's activations"));
    }

    #[test]
    fn a_token_budget_bounds_the_micro_batch() {
        let rows = |p: &MemoryPlan| term(p, 0, "RL update: mask and rope tables").note.clone();
        let count = plan(&config("", ""), &tiny(), 1);
        assert!(rows(&count).starts_with("[4, 1, 192, 192]"), "{}", rows(&count));
        // Sequences of 128 + 64 tokens: a budget of 400 holds two, one of 100 still one.
        for (budget, expect) in [(400, "[2, 1, 192, 192]"), (100, "[1, 1, 192, 192]")] {
            let packed = plan(&config("", &format!("micro_batch_tokens = {budget}\n")), &tiny(), 1);
            assert!(rows(&packed).starts_with(expect), "{budget}: {}", rows(&packed));
            assert!(packed.ranks[0].phase_bytes(Phase::UpdateLayers) < count.ranks[0].phase_bytes(Phase::UpdateLayers));
        }
    }

    #[test]
    fn on_cpu_the_heap_keeps_its_high_water_across_phases() {
        let gpu = plan(&config("", ""), &tiny(), 1);
        let mut cpu_config = config("", "");
        cpu_config.run.device = crate::config::DeviceConfig::Cpu;
        let cpu = plan(&cpu_config, &tiny(), 1);
        assert!(gpu.ranks[0].terms.iter().all(|t| !t.in_heap && t.name != "CPU heap high-water"));
        let high = term(&cpu, 0, "CPU heap high-water").bytes;
        // The decode's [rows, vocab] sampling blocks (under 32 MiB) stay resident in the update.
        let decode = term(&cpu, 0, "decode working set");
        assert!(decode.in_heap && decode.block < CPU_MMAP_THRESHOLD && high >= decode.bytes);
        let chunk = term(&cpu, 0, "RL update: logits chunk (backward)");
        assert!(!chunk.in_heap);
        let rank = &cpu.ranks[0];
        assert!(rank.phase_bytes(Phase::UpdateHead) >= high + chunk.bytes);
    }

    #[test]
    fn the_last_line_and_the_limit() {
        let plan = plan(&config("", ""), &tiny(), 1);
        let text = plan.to_string();
        let last = text.lines().last().unwrap();
        assert_eq!(last, plan.peak_line());
        assert!(last.starts_with("peak per rank: ") && last.ends_with(" GiB"), "{last}");
        let peak = plan.peak_bytes() / GIB;
        assert!(plan.check_fits(peak + 0.01).is_ok());
        let err = plan.check_fits(peak / 2.0).unwrap_err();
        assert!(err.contains(&format!("{peak:.2} GiB")) && err.contains("--device-memory-gb"), "{err}");
    }
}
