//! A deterministic synthetic benchmark where RL has room (`make-synthetic --kind benchmark`):
//! the paper's structure (skewed domains, difficulty tiers inside each domain, a held-out
//! test split big enough for per-domain F1 with a confidence interval) with labels a tiny
//! policy can learn in minutes on 2 cores.
//!
//! A tiny Qwen3-VL learns far more from prompt TEXT than from pixels, so every prompt
//! carries a short "Findings:" phrase, and the tier sets how far that phrase can be trusted:
//!
//! - **easy**: always a cue phrase of the true label;
//! - **medium**: a cue phrase with probability [`MEDIUM_CUE_P`] (0.75), else a neutral phrase
//!   of the domain that says nothing about the label;
//! - **hard**: a cue phrase with probability [`HARD_CUE_P`] (0.5), else a distractor: a cue
//!   phrase of a WRONG label of the same dataset, hedged ("prior report described ..., not
//!   confirmed on this study"). A bag-of-words reader is misled by it; a reader that learns
//!   the hedge knows the answer is not that label.
//!
//! Each sample also has a small 128 x 128 image (blocks of jittered colour, a few KB of PNG)
//! whose brightness shifts weakly with the label index. There are no boxes or masks (the IoU
//! reward scores 0 on every response), and every answer is one label of its dataset.
//!
//! Domains come in the ratio 10 : 4 : 2 : 1 (chest_xray, dermoscopy, fundus, ecg). The
//! domain, split and tier of sample `i` follow from `i` alone: domain from the 17-slot cycle,
//! then, with `k` the sample's occurrence number in its domain, split from `k % 10` (six
//! train, one val, three test) and tier from `(k % 10 + k / 10) % 3`, so every 30
//! occurrences of a domain hold each (split, tier) pair equally often. Dataset, label,
//! phrases and image come from the keyed stream of (seed, i): any subset can be
//! regenerated in parallel and a seed always gives the same rows.

use image::{ImageEncoder, RgbImage};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::rng;
use crate::sample::Sample;
pub use crate::synthetic::DIFFICULTIES;
use crate::synthetic::{write_generated, ShardLayout};

/// Rows `make-synthetic --kind benchmark` writes by default: 353 ecg samples, 105 of them test.
pub const DEFAULT_SAMPLES: usize = 6000;
/// Shard file prefix (`benchmark-NNNNN.parquet`).
pub const PREFIX: &str = "benchmark";
/// Image side in pixels (the demo's processor keeps 128 x 128 as is: 16 visual tokens).
pub const IMAGE_SIZE: u32 = 128;
/// Probability that a medium-tier prompt carries a cue of the true label.
pub const MEDIUM_CUE_P: f64 = 0.75;
/// Probability that a hard-tier prompt carries a cue of the true label.
pub const HARD_CUE_P: f64 = 0.5;
/// Split of occurrence `k % 10` of a domain: six train, one val, three test.
pub const SPLIT_PATTERN: [&str; 10] =
    ["train", "train", "train", "val", "train", "test", "train", "test", "train", "test"];

/// One label of a dataset with the findings phrases that point to it.
pub struct Label {
    pub name: &'static str,
    pub cues: &'static [&'static str],
}

/// A dataset: a small label set inside one domain.
pub struct Dataset {
    pub name: &'static str,
    pub labels: &'static [Label],
}

/// A domain: its question, its neutral phrases, its datasets and the base colour of its images.
pub struct Domain {
    pub name: &'static str,
    pub question: &'static str,
    pub neutral: &'static [&'static str],
    pub datasets: &'static [Dataset],
    pub color: [f32; 3],
}

const fn label(name: &'static str, cues: &'static [&'static str]) -> Label {
    Label { name, cues }
}

/// The four domains, largest first.
pub const DOMAINS: [Domain; 4] = [
    Domain {
        name: "chest_xray",
        question: "Above is a chest X-ray image of a patient.",
        neutral: &[
            "portable technique limits evaluation",
            "patient rotated on this view",
            "no prior study available for comparison",
        ],
        datasets: &[
            Dataset {
                name: "bench_cxr_pneumonia",
                labels: &[
                    label("normal", &["clear and well expanded lungs", "normal lung aeration bilaterally"]),
                    label(
                        "pneumonia",
                        &[
                            "focal consolidation in the right lower lobe",
                            "lobar airspace opacity with air bronchograms",
                        ],
                    ),
                ],
            },
            Dataset {
                name: "bench_cxr_findings",
                labels: &[
                    label(
                        "no finding",
                        &["unremarkable heart and lungs", "normal mediastinal contour and clear lungs"],
                    ),
                    label(
                        "pleural effusion",
                        &["blunting of the costophrenic angle", "meniscus of fluid at the lung base"],
                    ),
                    label("cardiomegaly", &["enlarged cardiac silhouette", "cardiothoracic ratio above 0.6"]),
                    label(
                        "pneumothorax",
                        &["visible pleural line with absent lung markings", "apical lucency without vascular markings"],
                    ),
                ],
            },
        ],
        color: [118.0, 118.0, 118.0],
    },
    Domain {
        name: "dermoscopy",
        question: "Above is a dermoscopy image of a skin lesion.",
        neutral: &["image partially out of focus", "hair artifacts over the lesion", "ruler marks at the image edge"],
        datasets: &[
            Dataset {
                name: "bench_derm_melanoma",
                labels: &[
                    label(
                        "nevus",
                        &["symmetric lesion with a regular pigment network", "uniform brown color and smooth border"],
                    ),
                    label(
                        "melanoma",
                        &["asymmetric lesion with irregular borders", "atypical network with a blue-white veil"],
                    ),
                ],
            },
            Dataset {
                name: "bench_derm_lesions",
                labels: &[
                    label(
                        "basal cell carcinoma",
                        &["arborizing vessels and a pearly surface", "leaf-like areas with ulceration"],
                    ),
                    label(
                        "seborrheic keratosis",
                        &["milia-like cysts and comedo-like openings", "waxy stuck-on appearance"],
                    ),
                    label(
                        "actinic keratosis",
                        &["strawberry pattern with surface scale", "red pseudo-network with white scale"],
                    ),
                ],
            },
        ],
        color: [196.0, 150.0, 128.0],
    },
    Domain {
        name: "fundus",
        question: "Above is a color fundus photograph of a patient's eye.",
        neutral: &["small pupil limits the view", "image mildly blurred", "uneven illumination at the periphery"],
        datasets: &[Dataset {
            name: "bench_fundus_screening",
            labels: &[
                label(
                    "normal fundus",
                    &["healthy optic disc and clear macula", "normal retinal vessels without lesions"],
                ),
                label(
                    "diabetic retinopathy",
                    &["scattered microaneurysms and dot hemorrhages", "hard exudates near the macula"],
                ),
                label("glaucoma", &["enlarged optic cup with a thin neuroretinal rim", "cup-to-disc ratio of 0.8"]),
            ],
        }],
        color: [178.0, 84.0, 40.0],
    },
    Domain {
        name: "ecg",
        question: "Above is a printout of a 12-lead ECG of a patient.",
        neutral: &["baseline wander in the limb leads", "muscle artifact in several leads", "lead placement uncertain"],
        datasets: &[Dataset {
            name: "bench_ecg_rhythm",
            labels: &[
                label(
                    "normal sinus rhythm",
                    &["regular rhythm at 75 bpm with upright P waves", "regular P-QRS sequence at a normal rate"],
                ),
                label(
                    "atrial fibrillation",
                    &[
                        "irregularly irregular rhythm without P waves",
                        "fibrillatory baseline with variable RR intervals",
                    ],
                ),
                label(
                    "sinus bradycardia",
                    &["regular rhythm at 48 bpm with normal P waves", "slow regular sinus rate below 60"],
                ),
            ],
        }],
        color: [236.0, 206.0, 206.0],
    },
];

/// Slots of the 10 : 4 : 2 : 1 domain cycle (indices into [`DOMAINS`]).
const CYCLE: [usize; 17] = [0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0, 0];

/// How a hard prompt hides a wrong label's cue.
const DISTRACTORS: [&str; 2] =
    ["prior report described {}, not confirmed on this study", "referral mentions {}, not seen on this study"];

/// Which findings phrase a prompt got.
pub const CUE_KINDS: [&str; 3] = ["label", "neutral", "distractor"];

/// `(domain index, occurrence of that domain before sample index)` of sample `index`.
pub fn slot(index: usize) -> (usize, usize) {
    let domain = CYCLE[index % CYCLE.len()];
    let per_cycle = CYCLE.iter().filter(|&&d| d == domain).count();
    let before = CYCLE[..index % CYCLE.len()].iter().filter(|&&d| d == domain).count();
    (domain, index / CYCLE.len() * per_cycle + before)
}

/// Split of the domain's occurrence `k`.
pub fn split_of(k: usize) -> &'static str {
    SPLIT_PATTERN[k % 10]
}

/// Tier (index into [`DIFFICULTIES`]) of the domain's occurrence `k`.
pub fn tier_of(k: usize) -> usize {
    (k % 10 + k / 10) % 3
}

/// Writes `samples` rows into `dir` as `benchmark-NNNNN.parquet` shards.
pub fn write_benchmark(
    dir: &std::path::Path,
    samples: usize,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<std::path::PathBuf>> {
    let layout = ShardLayout { prefix: PREFIX, rows_per_file: 1024, rows_per_row_group: 32, chunk: 256 };
    write_generated(dir, &layout, samples, |i| generate(seed, i), &mut progress)
}

/// Sample `index` of the benchmark with `seed`.
pub fn generate(seed: u64, index: usize) -> Sample {
    let mut r = rng::stream(seed, &[0xBE_4C_u64, index as u64]);
    let (d, k) = slot(index);
    let domain = &DOMAINS[d];
    let (split, tier) = (split_of(k), tier_of(k));
    let dataset = &domain.datasets[rng::below(&mut r, domain.datasets.len() as u64) as usize];
    let n = dataset.labels.len();
    let truth = rng::below(&mut r, n as u64) as usize;
    let cue_p = [1.0, MEDIUM_CUE_P, HARD_CUE_P][tier];
    let cue_kind = if rng::unit(&mut r) < cue_p {
        0
    } else if tier == 1 {
        1
    } else {
        2
    };
    let pick = |r: &mut ChaCha8Rng, items: &[&'static str]| items[rng::below(r, items.len() as u64) as usize];
    let (phrase, lure) = match cue_kind {
        0 => (pick(&mut r, dataset.labels[truth].cues).to_string(), None),
        1 => (pick(&mut r, domain.neutral).to_string(), None),
        _ => {
            // A wrong label, uniformly among the others.
            let wrong = (truth + 1 + rng::below(&mut r, n as u64 - 1) as usize) % n;
            let cue = pick(&mut r, dataset.labels[wrong].cues);
            (pick(&mut r, &DISTRACTORS).replace("{}", cue), Some(dataset.labels[wrong].name))
        }
    };
    let image = tile_image(&mut r, domain.color, truth, n);
    let choices: Vec<String> = dataset.labels.iter().map(|l| l.name.to_string()).collect();
    let mut extra = serde_json::json!({
        "difficulty": DIFFICULTIES[tier],
        "cue": CUE_KINDS[cue_kind],
        "seed": seed,
        "index": index,
    });
    if let Some(lure) = lure {
        extra["distractor_label"] = lure.into();
    }
    Sample {
        id: format!("bench-{index:06}-{}", DIFFICULTIES[tier]),
        dataset: dataset.name.to_string(),
        domain: domain.name.to_string(),
        modality: "image".into(),
        split: split.into(),
        problem: format!(
            "{} Findings: {phrase}. What is the diagnosis? Answer with one phrase from the following:\n{}",
            domain.question,
            choices.join("\n")
        ),
        answer: dataset.labels[truth].name.to_string(),
        choices,
        images: vec![image],
        extra: extra.to_string(),
        ..Default::default()
    }
}

/// A 128 x 128 RGB image of 16 x 16-pixel blocks: the domain colour, shifted by 6 grey
/// levels per label index (centred), a per-image jitter of +-24 and per-block noise of
/// +-16, so the label is only weakly visible. Flat blocks keep the PNG a few KB.
fn tile_image(r: &mut ChaCha8Rng, base: [f32; 3], label: usize, labels: usize) -> Vec<u8> {
    const BLOCK: u32 = 16;
    let tint = 6.0 * (label as f32 - (labels as f32 - 1.0) / 2.0);
    let jitter = (rng::unit(r) as f32 - 0.5) * 48.0;
    let blocks = IMAGE_SIZE / BLOCK;
    let noise: Vec<f32> = (0..blocks * blocks).map(|_| (rng::unit(r) as f32 - 0.5) * 32.0).collect();
    let img = RgbImage::from_fn(IMAGE_SIZE, IMAGE_SIZE, |x, y| {
        let shift = tint + jitter + noise[((y / BLOCK) * blocks + x / BLOCK) as usize];
        image::Rgb(base.map(|c| (c + shift).clamp(0.0, 255.0) as u8))
    });
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), IMAGE_SIZE, IMAGE_SIZE, image::ExtendedColorType::Rgb8)
        .expect("encoding a valid buffer into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{check_sample, Checks};

    #[test]
    fn samples_are_deterministic_valid_and_single_label() {
        for i in 0..60 {
            let a = generate(3, i);
            assert_eq!(a, generate(3, i));
            check_sample(&a, Checks::FullDecode).unwrap_or_else(|e| panic!("sample {i}: {e}"));
            assert_eq!(a.answer_labels().len(), 1);
            assert!(a.choices.contains(&a.answer), "{} not among {:?}", a.answer, a.choices);
            assert!(a.boxes.is_empty() && a.mask.is_none());
            assert!(a.images[0].len() < 8192, "image of {} bytes", a.images[0].len());
        }
        assert_ne!(generate(3, 5).images, generate(4, 5).images);
    }

    #[test]
    fn slots_count_occurrences_per_domain() {
        let mut seen = [0usize; 4];
        for i in 0..17 * 7 {
            let (d, k) = slot(i);
            assert_eq!(k, seen[d], "index {i}");
            seen[d] += 1;
        }
        assert_eq!(seen, [70, 28, 14, 7]);
    }

    #[test]
    fn thirty_occurrences_hold_every_split_and_tier_pair_evenly() {
        let mut counts = std::collections::BTreeMap::new();
        for k in 0..30 {
            *counts.entry((split_of(k), tier_of(k))).or_insert(0) += 1;
        }
        for tier in 0..3 {
            assert_eq!(counts[&("train", tier)], 6);
            assert_eq!(counts[&("val", tier)], 1);
            assert_eq!(counts[&("test", tier)], 3);
        }
    }

    #[test]
    fn cues_follow_the_tier() {
        // Easy prompts always hold a cue of the true label; distractors only appear in hard
        // prompts, neutral phrases only in medium ones, and no cue phrase is shared.
        let mut all_cues = Vec::new();
        for d in &DOMAINS {
            for ds in d.datasets {
                for l in ds.labels {
                    all_cues.extend(l.cues.iter().copied());
                }
            }
        }
        let unique: std::collections::BTreeSet<_> = all_cues.iter().collect();
        assert_eq!(unique.len(), all_cues.len());
        for i in 0..300 {
            let s = generate(1, i);
            let extra: serde_json::Value = serde_json::from_str(&s.extra).unwrap();
            let (tier, cue) = (extra["difficulty"].as_str().unwrap(), extra["cue"].as_str().unwrap());
            assert!(s.id.ends_with(tier));
            match (tier, cue) {
                ("easy", "label") | ("medium", "label" | "neutral") | ("hard", "label" | "distractor") => {}
                other => panic!("sample {i}: {other:?}"),
            }
            let domain = DOMAINS.iter().find(|d| d.name == s.domain).unwrap();
            let ds = domain.datasets.iter().find(|ds| ds.name == s.dataset).unwrap();
            let truth = ds.labels.iter().find(|l| l.name == s.answer).unwrap();
            let has_true_cue = truth.cues.iter().any(|c| s.problem.contains(c));
            assert_eq!(has_true_cue, cue == "label", "sample {i}: {}", s.problem);
            if cue == "distractor" {
                assert!(s.problem.contains("not "));
                assert_ne!(extra["distractor_label"].as_str().unwrap(), s.answer);
            }
        }
    }
}
