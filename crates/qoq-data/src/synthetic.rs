//! A deterministic synthetic CLIMB-like set in the shard schema: the bundled default for
//! the demo and the tests. Findings are drawn into the pixels, so labels and boxes follow
//! from the image and a model can learn them.
//!
//! Domains come in the fixed ratio 10 : 4 : 2 : 1 (chest_xray, mammography, dermoscopy,
//! ecg), each sample has a difficulty tier (easy, medium, hard: finding contrast and size
//! shrink), a box per finding in original pixels, a mask of the findings, and ECG samples
//! carry an 8 x 2500 signal (250 Hz) plus a plot of lead II as their image.
//!
//! Sample `i` depends only on (seed, i), so any subset can be regenerated in parallel.

use image::{GrayImage, ImageEncoder, RgbImage};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::Result;
use crate::rng;
use crate::sample::{LabeledBox, Sample, Signal};
use crate::shards::ShardWriter;

/// Image side in pixels.
pub const SIZE: u32 = 512;
/// Slots of the 10 : 4 : 2 : 1 domain cycle.
const CYCLE: [&str; 17] = [
    "chest_xray",
    "chest_xray",
    "mammography",
    "chest_xray",
    "dermoscopy",
    "chest_xray",
    "mammography",
    "chest_xray",
    "ecg",
    "chest_xray",
    "mammography",
    "chest_xray",
    "dermoscopy",
    "chest_xray",
    "mammography",
    "chest_xray",
    "chest_xray",
];
pub const DIFFICULTIES: [&str; 3] = ["easy", "medium", "hard"];

const CXR_LABELS: [&str; 4] = ["no finding", "nodule", "pleural effusion", "cardiomegaly"];
const MAMMO_LABELS: [&str; 3] = ["normal", "benign mass", "malignant mass"];
const DERM_LABELS: [&str; 2] = ["nevus", "melanoma"];
/// The ECG rows' rhythms (their answers), in this order.
pub const ECG_LABELS: [&str; 4] =
    ["normal sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation"];

/// Writes `samples` rows into `dir` as `synthetic-NNNNN.parquet` shards.
pub fn write_synthetic(
    dir: &std::path::Path,
    samples: usize,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<std::path::PathBuf>> {
    let layout = ShardLayout { prefix: "synthetic", rows_per_file: 256, rows_per_row_group: 32, chunk: 64 };
    write_generated(dir, &layout, samples, |i| generate(seed, i), &mut progress)
}

/// Shard file prefix of [`write_synthetic_ecg`].
pub const ECG_PREFIX: &str = "ecg";

/// Writes the first `samples` ECG rows of the set with `seed` ([`generate_ecg`]: the same
/// rows, ids and splits as the whole set's ECG rows) into `dir` as `ecg-NNNNN.parquet`
/// shards: the stage-1 demo's set, without drawing the other domains' images.
pub fn write_synthetic_ecg(
    dir: &std::path::Path,
    samples: usize,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> Result<Vec<std::path::PathBuf>> {
    let layout = ShardLayout { prefix: ECG_PREFIX, rows_per_file: 256, rows_per_row_group: 32, chunk: 64 };
    write_generated(dir, &layout, samples, |n| generate_ecg(seed, n), &mut progress)
}

/// How a generated set is cut into shards: file prefix, rows per file and per row group,
/// and rows generated in parallel at a time.
pub(crate) struct ShardLayout {
    pub prefix: &'static str,
    pub rows_per_file: usize,
    pub rows_per_row_group: usize,
    pub chunk: usize,
}

/// Writes rows `generate(0..samples)` into `dir`, generated `layout.chunk` at a time in
/// parallel and written in index order (so the bytes do not depend on the thread count).
pub(crate) fn write_generated(
    dir: &std::path::Path,
    layout: &ShardLayout,
    samples: usize,
    generate: impl Fn(usize) -> Sample + Sync,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<std::path::PathBuf>> {
    let mut writer = ShardWriter::new(dir, layout.prefix)?
        .rows_per_file(layout.rows_per_file)
        .rows_per_row_group(layout.rows_per_row_group);
    for start in (0..samples).step_by(layout.chunk) {
        let end = (start + layout.chunk).min(samples);
        let chunk: Vec<Sample> = (start..end).into_par_iter().map(&generate).collect();
        for s in chunk {
            writer.write(s)?;
        }
        progress(end - start);
    }
    writer.finish()
}

/// The `n`-th ECG sample (in index order) of the set with `seed`: one in every 17 samples
/// is an ECG, so this skips drawing the images of the others.
pub fn generate_ecg(seed: u64, n: usize) -> Sample {
    let slot = CYCLE.iter().position(|d| *d == "ecg").unwrap_or_default();
    generate(seed, n * CYCLE.len() + slot)
}

/// Sample `index` of the set with `seed`.
pub fn generate(seed: u64, index: usize) -> Sample {
    let mut r = rng::stream(seed, &[0x5947_u64, index as u64]);
    let domain = CYCLE[index % CYCLE.len()];
    let tier = rng::below(&mut r, 3) as usize;
    let split = if index % 10 == 9 { "val" } else { "train" };
    let (labels, choices, image, boxes, mask, ecg, question) = match domain {
        "chest_xray" => chest_xray(&mut r, tier),
        "mammography" => mammography(&mut r, tier),
        "dermoscopy" => dermoscopy(&mut r, tier),
        _ => ecg(&mut r, tier),
    };
    let options = choices.join("\n");
    Sample {
        id: format!("syn-{index:06}"),
        dataset: format!("synthetic_{domain}"),
        domain: domain.to_string(),
        modality: if ecg.is_some() { "ecg".into() } else { "image".into() },
        split: split.into(),
        problem: format!("{question} Answer with one or multiple phrases from the following:\n{options}"),
        answer: labels.join(", "),
        choices: choices.iter().map(|s| s.to_string()).collect(),
        images: vec![image],
        videos: Vec::new(),
        ecg,
        boxes,
        mask,
        extra: serde_json::json!({ "difficulty": DIFFICULTIES[tier], "seed": seed, "index": index }).to_string(),
    }
}

type Drawn = (Vec<String>, Vec<&'static str>, Vec<u8>, Vec<LabeledBox>, Option<Vec<u8>>, Option<Signal>, &'static str);

/// A float canvas with a mask of the drawn findings.
struct Canvas {
    v: Vec<f32>,
    mask: Vec<bool>,
}

impl Canvas {
    fn new(f: impl Fn(f32, f32) -> f32) -> Self {
        let n = (SIZE * SIZE) as usize;
        let mut v = Vec::with_capacity(n);
        for y in 0..SIZE {
            for x in 0..SIZE {
                v.push(f(x as f32, y as f32));
            }
        }
        Self { v, mask: vec![false; n] }
    }

    /// Adds `delta` inside the region `inside(x, y)` (within `bbox`), marking the mask.
    /// Returns the tight box of the touched pixels.
    fn paint(&mut self, bbox: [f32; 4], delta: f32, inside: impl Fn(f32, f32) -> bool) -> [f32; 4] {
        let clamp = |v: f32| v.clamp(0.0, SIZE as f32 - 1.0) as u32;
        let (x0, y0, x1, y1) = (clamp(bbox[0]), clamp(bbox[1]), clamp(bbox[2]), clamp(bbox[3]));
        let mut tight = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
        for y in y0..=y1 {
            for x in x0..=x1 {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    let i = (y * SIZE + x) as usize;
                    self.v[i] += delta;
                    self.mask[i] = true;
                    tight = [
                        tight[0].min(x as f32),
                        tight[1].min(y as f32),
                        tight[2].max(x as f32 + 1.0),
                        tight[3].max(y as f32 + 1.0),
                    ];
                }
            }
        }
        tight
    }

    fn noise(&mut self, r: &mut ChaCha8Rng, amplitude: f32) {
        for v in &mut self.v {
            *v += (rng::unit(r) as f32 - 0.5) * amplitude;
        }
    }

    fn grey_png(&self) -> Vec<u8> {
        let img = GrayImage::from_fn(SIZE, SIZE, |x, y| {
            image::Luma([self.v[(y * SIZE + x) as usize].clamp(0.0, 255.0) as u8])
        });
        encode_png(img.as_raw(), image::ExtendedColorType::L8)
    }

    fn mask_png(&self) -> Option<Vec<u8>> {
        if !self.mask.iter().any(|&m| m) {
            return None;
        }
        let bytes: Vec<u8> = self.mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        Some(encode_png(&bytes, image::ExtendedColorType::L8))
    }
}

fn encode_png(raw: &[u8], color: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(raw, SIZE, SIZE, color)
    .expect("encoding a valid buffer into memory cannot fail");
    out
}

fn uniform(r: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng::unit(r) as f32
}

fn chance(r: &mut ChaCha8Rng, p: f64) -> bool {
    rng::unit(r) < p
}

/// Contrast of a finding for each difficulty tier.
fn contrast(tier: usize) -> f32 {
    [70.0, 40.0, 22.0][tier]
}

fn chest_xray(r: &mut ChaCha8Rng, tier: usize) -> Drawn {
    let s = SIZE as f32;
    let (phase, tilt) = (uniform(r, 0.0, std::f32::consts::TAU), uniform(r, 0.5, 1.5));
    // Dark thorax with two brighter lung fields and a central heart shadow.
    let mut c = Canvas::new(|x, y| {
        let lung = |cx: f32| ((x - cx) / (0.17 * s)).powi(2) + ((y - 0.48 * s) / (0.33 * s)).powi(2) < 1.0;
        let base = 40.0 + 10.0 * ((x / s) * 6.0 * tilt + phase).sin();
        if lung(0.32 * s) || lung(0.68 * s) {
            base + 60.0
        } else {
            base
        }
    });
    let k = contrast(tier);
    let mut labels = Vec::new();
    let mut boxes = Vec::new();
    let cardiomegaly = chance(r, 0.3);
    let heart_rx = if cardiomegaly { 0.2 * s } else { 0.11 * s };
    let (hx, hy, hry) = (0.5 * s, 0.62 * s, 0.13 * s);
    let heart = c.paint([hx - heart_rx, hy - hry, hx + heart_rx, hy + hry], 35.0, |x, y| {
        ((x - hx) / heart_rx).powi(2) + ((y - hy) / hry).powi(2) < 1.0
    });
    if !cardiomegaly {
        c.mask.fill(false); // a normal heart is anatomy, not a finding
    }
    if chance(r, 0.4) {
        let rad = uniform(r, 0.03, 0.06) * s * [1.0, 0.8, 0.6][tier];
        let (nx, ny) = (uniform(r, 0.22, 0.78) * s, uniform(r, 0.25, 0.5) * s);
        let b = c
            .paint([nx - rad, ny - rad, nx + rad, ny + rad], k, |x, y| (x - nx).powi(2) + (y - ny).powi(2) < rad * rad);
        labels.push("nodule".to_string());
        boxes.push(LabeledBox { bbox: b, label: "nodule".into() });
    }
    if chance(r, 0.3) {
        let left = chance(r, 0.5);
        let cx = if left { 0.32 * s } else { 0.68 * s };
        let top = uniform(r, 0.62, 0.7) * s;
        let b = c.paint([cx - 0.17 * s, top, cx + 0.17 * s, 0.81 * s], k, |x, y| {
            y > top + 6.0 * ((x / 9.0).sin())
                && ((x - cx) / (0.17 * s)).powi(2) + ((y - 0.48 * s) / (0.33 * s)).powi(2) < 1.0
        });
        labels.push("pleural effusion".to_string());
        boxes.push(LabeledBox { bbox: b, label: "pleural effusion".into() });
    }
    if cardiomegaly {
        labels.push("cardiomegaly".to_string());
        boxes.push(LabeledBox { bbox: heart, label: "cardiomegaly".into() });
    }
    if labels.is_empty() {
        labels.push("no finding".to_string());
    }
    c.noise(r, 12.0);
    (
        labels,
        CXR_LABELS.to_vec(),
        c.grey_png(),
        boxes,
        c.mask_png(),
        None,
        "Above is a chest X-ray image of a patient. What is the diagnosis of the patient in the X-ray image?",
    )
}

fn mammography(r: &mut ChaCha8Rng, tier: usize) -> Drawn {
    let s = SIZE as f32;
    let right = chance(r, 0.5);
    let bx = if right { s } else { 0.0 };
    let mut c = Canvas::new(|x, y| {
        let d = ((x - bx) / (0.75 * s)).powi(2) + ((y - 0.5 * s) / (0.48 * s)).powi(2);
        if d < 1.0 {
            70.0 + 50.0 * (1.0 - d)
        } else {
            8.0
        }
    });
    let kind = rng::below(r, 3) as usize;
    let mut boxes = Vec::new();
    if kind > 0 {
        let rad = uniform(r, 0.05, 0.09) * s * [1.0, 0.8, 0.65][tier];
        let mx = if right { uniform(r, 0.55, 0.8) * s } else { uniform(r, 0.2, 0.45) * s };
        let my = uniform(r, 0.3, 0.7) * s;
        let spikes = kind == 2;
        let b = c.paint([mx - 1.6 * rad, my - 1.6 * rad, mx + 1.6 * rad, my + 1.6 * rad], contrast(tier), |x, y| {
            let (dx, dy) = (x - mx, y - my);
            let reach = if spikes { rad * (1.0 + 0.55 * (dy.atan2(dx) * 7.0).cos().max(0.0)) } else { rad };
            dx * dx + dy * dy < reach * reach
        });
        boxes.push(LabeledBox { bbox: b, label: MAMMO_LABELS[kind].into() });
    }
    c.noise(r, 10.0);
    (
        vec![MAMMO_LABELS[kind].to_string()],
        MAMMO_LABELS.to_vec(),
        c.grey_png(),
        boxes,
        c.mask_png(),
        None,
        "Above is a mammogram of a patient. What is the finding in the mammogram?",
    )
}

fn dermoscopy(r: &mut ChaCha8Rng, tier: usize) -> Drawn {
    let s = SIZE as f32;
    let melanoma = chance(r, 0.5);
    let skin = [uniform(r, 190.0, 225.0), uniform(r, 150.0, 180.0), uniform(r, 130.0, 160.0)];
    let (lx, ly) = (uniform(r, 0.35, 0.65) * s, uniform(r, 0.35, 0.65) * s);
    let rad = uniform(r, 0.12, 0.2) * s * [1.0, 0.85, 0.7][tier];
    let lobes = uniform(r, 3.0, 6.0);
    let inside = |x: f32, y: f32| {
        let (dx, dy) = (x - lx, y - ly);
        let reach = if melanoma { rad * (1.0 + 0.3 * (dy.atan2(dx) * lobes).sin()) } else { rad };
        dx * dx + dy * dy < reach * reach
    };
    let k = contrast(tier) / 70.0;
    let mut mask = Canvas::new(|_, _| 0.0);
    let bbox = mask.paint([lx - 1.3 * rad, ly - 1.3 * rad, lx + 1.3 * rad, ly + 1.3 * rad], 1.0, inside);
    let mut img = RgbImage::new(SIZE, SIZE);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let lesion = mask.mask[(y * SIZE + x) as usize];
        let n = (rng::unit(r) as f32 - 0.5) * 10.0;
        let mut rgb = skin;
        if lesion {
            // Melanoma: darker with a blue-grey veil varying across the lesion.
            let shade =
                if melanoma { [110.0, 110.0, 90.0 - 40.0 * (x as f32 / 23.0).sin()] } else { [70.0, 80.0, 80.0] };
            for ch in 0..3 {
                rgb[ch] -= shade[ch] * k;
            }
        }
        p.0 = [
            (rgb[0] + n).clamp(0.0, 255.0) as u8,
            (rgb[1] + n).clamp(0.0, 255.0) as u8,
            (rgb[2] + n).clamp(0.0, 255.0) as u8,
        ];
    }
    let label = DERM_LABELS[usize::from(melanoma)];
    (
        vec![label.to_string()],
        DERM_LABELS.to_vec(),
        encode_png(img.as_raw(), image::ExtendedColorType::Rgb8),
        vec![LabeledBox { bbox, label: label.into() }],
        mask.mask_png(),
        None,
        "Above is a dermoscopy image of a skin lesion. What is the diagnosis?",
    )
}

fn ecg(r: &mut ChaCha8Rng, tier: usize) -> Drawn {
    const LEADS: usize = 8;
    const SAMPLES: usize = 2500;
    const RATE: f32 = 250.0;
    let kind = rng::below(r, 4) as usize;
    let bpm = match kind {
        1 => uniform(r, 40.0, 55.0),
        2 => uniform(r, 110.0, 150.0),
        _ => uniform(r, 62.0, 95.0),
    };
    // Beat times; atrial fibrillation jitters the RR intervals and drops P waves.
    let mut beats = Vec::new();
    let mut t = uniform(r, 0.1, 0.6);
    while t < SAMPLES as f32 / RATE {
        beats.push(t);
        let jitter = if kind == 3 { uniform(r, -0.35, 0.35) } else { uniform(r, -0.02, 0.02) };
        t += 60.0 / bpm * (1.0 + jitter);
    }
    let gain: [f32; LEADS] = [1.0, 1.3, -0.4, 0.3, 0.8, 1.2, 1.0, 0.7];
    let noise = [0.02, 0.05, 0.09][tier];
    let mut values = vec![0f32; LEADS * SAMPLES];
    let bump = |t: f32, at: f32, width: f32| (-((t - at) / width).powi(2)).exp();
    for i in 0..SAMPLES {
        let ts = i as f32 / RATE;
        let mut v = 0.0;
        for &b in &beats {
            if (ts - b).abs() > 0.5 {
                continue;
            }
            v += 1.2 * bump(ts, b, 0.012) - 0.15 * bump(ts, b + 0.03, 0.01) + 0.3 * bump(ts, b + 0.25, 0.05);
            if kind != 3 {
                v += 0.15 * bump(ts, b - 0.16, 0.025);
            }
        }
        for (lead, g) in gain.iter().enumerate() {
            values[lead * SAMPLES + i] = g * v + noise * (rng::unit(r) as f32 - 0.5);
        }
    }
    // Plot of lead II (index 1) on ECG paper, 10 s across the image.
    let s = SIZE as f32;
    let mut c =
        Canvas::new(|x, y| if (x as u32).is_multiple_of(25) || (y as u32).is_multiple_of(25) { 215.0 } else { 245.0 });
    let lead2 = &values[SAMPLES..2 * SAMPLES];
    let mut prev = None;
    for px in 0..SIZE {
        let i = ((px as f32 / s) * SAMPLES as f32) as usize;
        let y = (0.6 * s - lead2[i] * 0.25 * s).clamp(0.0, s - 1.0);
        let (lo, hi) = match prev {
            Some(p) => (f32::min(p, y), f32::max(p, y)),
            None => (y, y),
        };
        for yy in lo as u32..=hi as u32 {
            c.v[(yy * SIZE + px) as usize] = 20.0;
        }
        prev = Some(y);
    }
    let label = ECG_LABELS[kind];
    (
        vec![label.to_string()],
        ECG_LABELS.to_vec(),
        c.grey_png(),
        Vec::new(),
        None,
        Some(Signal { leads: LEADS as u32, samples: SAMPLES as u32, sampling_rate_hz: RATE, values }),
        "Above is lead II of a 10-second ECG (8 leads at 250 Hz are attached). What is the rhythm?",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{check_sample, Checks};

    #[test]
    fn samples_are_deterministic_and_valid() {
        for i in 0..34 {
            let a = generate(5, i);
            assert_eq!(a, generate(5, i));
            check_sample(&a, Checks::FullDecode).unwrap_or_else(|e| panic!("sample {i}: {e}"));
            assert!(!a.answer.is_empty());
            for label in a.answer_labels() {
                assert!(a.choices.iter().any(|c| c == label), "{label} not among {:?}", a.choices);
            }
        }
        assert_ne!(generate(5, 3).images, generate(6, 3).images);
    }

    #[test]
    fn domains_follow_the_10_4_2_1_ratio() {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..170 {
            *counts.entry(CYCLE[i % CYCLE.len()]).or_insert(0) += 1;
        }
        assert_eq!(counts["chest_xray"], 100);
        assert_eq!(counts["mammography"], 40);
        assert_eq!(counts["dermoscopy"], 20);
        assert_eq!(counts["ecg"], 10);
    }

    #[test]
    fn boxes_cover_the_drawn_findings() {
        // In every sample with a mask, each box must contain mask pixels and the mask must
        // lie within the union of the boxes: the label and box follow from the pixels.
        for i in 0..40 {
            let s = generate(9, i);
            let Some(mask) = &s.mask else { continue };
            let m = image::load_from_memory(mask).unwrap().into_luma8();
            for b in &s.boxes {
                let [x1, y1, x2, y2] = b.bbox;
                assert!(x2 > x1 && y2 > y1);
                let hits = m
                    .enumerate_pixels()
                    .filter(|(x, y, p)| {
                        p.0[0] > 0 && (*x as f32) >= x1 && (*x as f32) < x2 && (*y as f32) >= y1 && (*y as f32) < y2
                    })
                    .count();
                assert!(hits > 0, "sample {i}: box {:?} has no mask pixels", b.bbox);
            }
            for (x, y, p) in m.enumerate_pixels() {
                if p.0[0] > 0 {
                    let (x, y) = (x as f32, y as f32);
                    assert!(
                        s.boxes.iter().any(|b| x >= b.bbox[0] && x < b.bbox[2] && y >= b.bbox[1] && y < b.bbox[3]),
                        "sample {i}: mask pixel ({x}, {y}) outside every box"
                    );
                }
            }
        }
    }

    #[test]
    fn generate_ecg_draws_the_ecg_samples() {
        for n in [0, 1, 5] {
            let s = generate_ecg(3, n);
            assert_eq!(s.domain, "ecg");
            assert_eq!(s.id, generate(3, n * CYCLE.len() + 8).id);
        }
    }

    #[test]
    fn ecg_rhythm_follows_the_signal() {
        for i in (8..17 * 12).step_by(17) {
            let s = generate(2, i);
            let sig = s.ecg.as_ref().expect("slot 8 is ecg");
            assert_eq!(sig.values.len(), 8 * 2500);
            // Count R peaks on lead II: local maxima above 0.8.
            let lead = &sig.values[2500..5000];
            let peaks = (1..2499).filter(|&t| lead[t] > 0.8 && lead[t] >= lead[t - 1] && lead[t] > lead[t + 1]).count();
            let bpm = peaks as f32 * 6.0;
            match s.answer.as_str() {
                "sinus bradycardia" => assert!(bpm < 62.0, "{bpm}"),
                "sinus tachycardia" => assert!(bpm > 100.0, "{bpm}"),
                "normal sinus rhythm" => assert!((54.0..=102.0).contains(&bpm), "{bpm}"),
                _ => {}
            }
        }
    }
}
