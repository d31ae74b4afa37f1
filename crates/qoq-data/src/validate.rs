//! Row-level checks. A row that fails is a [`BadRow`]: skipped, counted and reported with
//! its file and row, never a crash. The run aborts only past `max_bad_fraction`.

use std::io::Cursor;
use std::path::PathBuf;

use image::ImageReader;

use crate::sample::Sample;

/// How deep to look at the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checks {
    /// Read image headers only (sizes, format): cheap, used while streaming.
    #[default]
    Headers,
    /// Decode every image, frame and mask fully (`inspect-data`).
    FullDecode,
}

/// A skipped row: where it is and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub file: PathBuf,
    /// Row index within a parquet file (0-based), or line number of a JSONL input (1-based).
    pub row: u64,
    pub id: String,
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {} (id {:?}): {}", self.file.display(), self.row, self.id, self.reason)
    }
}

/// Width and height of an encoded image; decodes it fully when `full`.
pub fn image_size(bytes: &[u8], full: bool) -> Result<(u32, u32), String> {
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("unreadable image: {e}"))?;
    if reader.format().is_none() {
        return Err("image is neither PNG nor JPEG".into());
    }
    if full {
        let img = reader.decode().map_err(|e| format!("undecodable image: {e}"))?;
        Ok((img.width(), img.height()))
    } else {
        reader.into_dimensions().map_err(|e| format!("undecodable image header: {e}"))
    }
}

/// Qwen-VL's smart_resize refuses aspect ratios above 200 (and empty images).
fn check_aspect((w, h): (u32, u32)) -> Result<(), String> {
    if w == 0 || h == 0 || w.max(h) as f64 / w.min(h) as f64 > 200.0 {
        return Err(format!("{w}x{h} is empty or has an aspect ratio above 200, which Qwen-VL cannot resize"));
    }
    Ok(())
}

/// Checks one sample; `Err` holds the reason it cannot be used.
pub fn check_sample(s: &Sample, checks: Checks) -> Result<(), String> {
    let full = checks == Checks::FullDecode;
    if s.id.trim().is_empty() {
        return Err("empty id".into());
    }
    if s.problem.trim().is_empty() {
        return Err("empty problem".into());
    }
    if s.answer.trim().is_empty() {
        return Err("empty answer".into());
    }
    if s.domain.trim().is_empty() {
        return Err("empty domain".into());
    }
    let mut first_size = None;
    for (i, img) in s.images.iter().enumerate() {
        let size = image_size(img, full).map_err(|e| format!("images[{i}]: {e}"))?;
        check_aspect(size).map_err(|e| format!("images[{i}]: {e}"))?;
        first_size.get_or_insert(size);
    }
    for (v, video) in s.videos.iter().enumerate() {
        if video.is_empty() {
            return Err(format!("videos[{v}] has no frames"));
        }
        let mut video_size = None;
        for (f, frame) in video.iter().enumerate() {
            let size = image_size(frame, full).map_err(|e| format!("videos[{v}][{f}]: {e}"))?;
            check_aspect(size).map_err(|e| format!("videos[{v}][{f}]: {e}"))?;
            if *video_size.get_or_insert(size) != size {
                return Err(format!(
                    "videos[{v}][{f}] is {}x{}, frame 0 is {}x{}: frames must share one size",
                    size.0,
                    size.1,
                    video_size.unwrap().0,
                    video_size.unwrap().1
                ));
            }
        }
        first_size = first_size.or(video_size);
    }
    if !s.boxes.is_empty() || s.mask.is_some() {
        let Some((w, h)) = first_size else {
            return Err("boxes or mask given but the sample has no image".into());
        };
        for (i, b) in s.boxes.iter().enumerate() {
            let [x1, y1, x2, y2] = b.bbox;
            if !b.bbox.iter().all(|v| v.is_finite()) {
                return Err(format!("boxes[{i}] is not 4 finite numbers"));
            }
            if x1 > x2 || y1 > y2 {
                return Err(format!("boxes[{i}] = {:?} has x1 > x2 or y1 > y2", b.bbox));
            }
            if x1 < 0.0 || y1 < 0.0 || x2 > w as f32 || y2 > h as f32 {
                return Err(format!("boxes[{i}] = {:?} lies outside the {w}x{h} image", b.bbox));
            }
        }
        if let Some(mask) = &s.mask {
            let size = image_size(mask, full).map_err(|e| format!("mask: {e}"))?;
            if size != (w, h) {
                return Err(format!("mask is {}x{}, image is {w}x{h}", size.0, size.1));
            }
        }
    }
    if let Some(sig) = &s.ecg {
        if sig.leads == 0 || sig.values.is_empty() {
            return Err("ecg has no leads or no samples".into());
        }
        if sig.values.len() % sig.leads as usize != 0 {
            return Err(format!("ecg has {} values, not a multiple of {} leads", sig.values.len(), sig.leads));
        }
        if let Some(i) = sig.values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "ecg value {i} (lead {}, sample {}) is not finite",
                i / sig.samples.max(1) as usize,
                i % sig.samples.max(1) as usize
            ));
        }
        if !(sig.sampling_rate_hz.is_finite() && sig.sampling_rate_hz > 0.0) {
            return Err(format!("ecg sampling rate {} is not a positive number", sig.sampling_rate_hz));
        }
    }
    Ok(())
}

/// Whether an ECG can be the ECG encoder's input ([`crate::preprocess::preprocess_ecg`]):
/// 8 or 12 leads, at least 5 s. The loader applies it when the policy has an ECG path
/// ([`crate::LoaderConfig::ecg_encoder`]), so such a row is a bad row there, counted like a
/// bad image; other runs may keep ECGs of any shape.
pub fn check_ecg_for_encoder(sig: &crate::Signal) -> Result<(), String> {
    if !matches!(sig.leads, 8 | 12) {
        return Err(format!(
            "ecg has {} leads; the ECG encoder takes 8 (I, II, V1-V6) or 12 (of which it keeps those 8)",
            sig.leads
        ));
    }
    let seconds = sig.samples as f64 / sig.sampling_rate_hz as f64;
    let least = crate::preprocess::ECG_MIN_SAMPLES as f64 / crate::preprocess::ECG_RATE_HZ as f64;
    if seconds < least {
        return Err(format!(
            "ecg is {seconds:.2} s long ({} samples at {} Hz); the ECG encoder needs at least {least} s",
            sig.samples, sig.sampling_rate_hz
        ));
    }
    Ok(())
}
