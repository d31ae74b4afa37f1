//! Qwen3-VL image and video preprocessing, equal to transformers' processor output:
//! RGB conversion -> smart_resize -> antialiased bicubic resize (u8) -> rescale and
//! normalise -> patchify into rows of 3 * 2 * 16 * 16 = 1536 values in (c, t, py, px)
//! order, ordered by 2x2 merge blocks, with `grid_thw` in patches. ECG records are
//! prepared for the ECG-JEPA encoder by [`preprocess_ecg`] (8 leads x 2,500 samples at
//! 250 Hz, z-scored).
//!
//! ```
//! use qoq_data::preprocess::ImageProcessor;
//! let proc = ImageProcessor::default(); // Qwen3-VL's preprocessor_config.json values
//! let img = image::RgbImage::from_pixel(300, 200, image::Rgb([10, 20, 30]));
//! let v = proc.preprocess_image(&img).unwrap();
//! assert_eq!(v.grid_thw, [1, 14, 20]);               // scaled up to 224 x 320 pixels
//! assert_eq!(v.pixel_values.len(), 14 * 20 * 1536);
//! ```

mod ecg;
mod fourier;
mod resize;
mod rgb;
mod smart_resize;

use std::path::Path;

use image::{GrayImage, RgbImage};
use serde::Deserialize;

pub use ecg::{preprocess_ecg, ECG_LEADS, ECG_LEADS_OF_12, ECG_MIN_SAMPLES, ECG_RATE_HZ, ECG_SAMPLES};
pub use resize::resize_bicubic_aa;
pub use rgb::{decode_rgb, to_rgb};
pub use smart_resize::{smart_resize, smart_resize_video};

use crate::error::{DataError, Result};
use crate::sample::{LabeledBox, Sample};

/// The fields of a checkpoint's `preprocessor_config.json` that matter here.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    /// Minimum pixel count (`size.shortest_edge` or legacy `min_pixels`).
    pub min_pixels: u64,
    /// Maximum pixel count (`size.longest_edge` or legacy `max_pixels`).
    pub max_pixels: u64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    /// Frames sampled uniformly from each video or volume (even, for temporal patches of 2).
    pub video_frames: usize,
    /// Pixel budget of a whole video, all frames together (`video_preprocessor_config.json`
    /// `size.shortest_edge` / `size.longest_edge`).
    pub video_min_pixels: u64,
    pub video_max_pixels: u64,
}

impl Default for ImageProcessorConfig {
    /// Qwen3-VL's released preprocessor_config.json.
    fn default() -> Self {
        Self {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            video_frames: 4,
            video_min_pixels: 131_072,
            video_max_pixels: 786_432,
        }
    }
}

#[derive(Deserialize)]
struct SizeField {
    shortest_edge: Option<u64>,
    longest_edge: Option<u64>,
}

impl ImageProcessorConfig {
    /// Qwen2.5-VL-7B-Instruct's released preprocessor_config.json: patch 14 (factor 28),
    /// OpenAI CLIP mean and std, 3,136 to 12,845,056 pixels.
    // The released file's values, digit for digit (f32 rounds them as Python's float32 does).
    #[allow(clippy::excessive_precision)]
    pub fn qwen2_5_vl() -> Self {
        Self {
            patch_size: 14,
            min_pixels: 3_136,
            max_pixels: 12_845_056,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_1],
            // Qwen2-VL's video processor: 128 to 768 merged-token units of 28x28 pixels.
            video_min_pixels: 128 * 28 * 28,
            video_max_pixels: 768 * 28 * 28,
            ..Self::default()
        }
    }

    /// Reads `preprocessor_config.json`, accepting both `size{shortest_edge, longest_edge}`
    /// and the legacy `min_pixels` / `max_pixels` keys; absent keys take Qwen3-VL's values.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json_file_over(path, Self::default())
    }

    /// As [`Self::from_json_file`], absent keys taking `base`'s values (a model family's).
    pub fn from_json_file_over(path: impl AsRef<Path>, base: Self) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DataError::invalid(path, format!("not JSON: {e}")))?;
        let mut merged = serde_json::to_value(&base).expect("the config serialises");
        if let (Some(into), Some(from)) = (merged.as_object_mut(), value.as_object()) {
            for (k, v) in from {
                into.insert(k.clone(), v.clone());
            }
        }
        let mut cfg: Self = serde_json::from_value(merged)
            .map_err(|e| DataError::invalid(path, format!("bad preprocessor config: {e}")))?;
        if let Some(size) = value.get("size") {
            let size: SizeField = serde_json::from_value(size.clone())
                .map_err(|e| DataError::invalid(path, format!("bad `size`: {e}")))?;
            // transformers 5.24 folds explicit `min_pixels` / `max_pixels` into `size`, so
            // those keys win over `size` when a file carries both.
            if value.get("min_pixels").is_none() {
                cfg.min_pixels = size.shortest_edge.unwrap_or(cfg.min_pixels);
            }
            if value.get("max_pixels").is_none() {
                cfg.max_pixels = size.longest_edge.unwrap_or(cfg.max_pixels);
            }
        }
        cfg.validate().map_err(|e| DataError::invalid(path, e))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return Err("patch_size, merge_size and temporal_patch_size must be positive".into());
        }
        if self.min_pixels > self.max_pixels || self.video_min_pixels > self.video_max_pixels {
            return Err(format!(
                "min_pixels must not exceed max_pixels (images: {} > {}? videos: {} > {}?)",
                self.min_pixels, self.max_pixels, self.video_min_pixels, self.video_max_pixels
            ));
        }
        if self.video_frames == 0 || !self.video_frames.is_multiple_of(self.temporal_patch_size as usize) {
            return Err(format!(
                "video_frames {} must be a positive multiple of {}",
                self.video_frames, self.temporal_patch_size
            ));
        }
        if self.image_std.contains(&0.0) || self.rescale_factor.is_nan() || self.rescale_factor <= 0.0 {
            return Err("image_std and rescale_factor must be non-zero".into());
        }
        Ok(())
    }

    /// Values per patch row: channels * temporal_patch * patch * patch (1536 for Qwen3-VL).
    pub fn patch_dim(&self) -> usize {
        3 * (self.temporal_patch_size * self.patch_size * self.patch_size) as usize
    }
}

/// A preprocessed image or video, ready for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionInput {
    /// `rows x patch_dim` values, row-major.
    pub pixel_values: Vec<f32>,
    /// Grid in patches: (t, h, w).
    pub grid_thw: [u32; 3],
    /// (width, height) before and after resizing.
    pub original_size: (u32, u32),
    pub resized_size: (u32, u32),
}

impl VisionInput {
    pub fn rows(&self) -> usize {
        self.grid_thw.iter().map(|&v| v as usize).product()
    }
    /// Placeholder tokens this input occupies in the prompt (after 2x2 merging).
    pub fn num_tokens(&self, merge_size: u32) -> usize {
        self.rows() / (merge_size * merge_size) as usize
    }
}

/// A sample's media preprocessed for the model, with the ground truth mapped into the
/// coordinates of the resized first image (the ones the model sees and answers in).
#[derive(Debug, Clone)]
pub struct PreparedMedia {
    pub images: Vec<VisionInput>,
    pub videos: Vec<VisionInput>,
    pub boxes: Vec<LabeledBox>,
    /// The mask at the resized size: 255 inside the region, 0 outside.
    pub mask: Option<GrayImage>,
}

/// Preprocessing with a fixed configuration and its normalisation table.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
    /// (v - mean_c) / std_c for every u8 value v, in f32 as torch computes it.
    lut: [[f32; 256]; 3],
}

impl Default for ImageProcessor {
    fn default() -> Self {
        Self::new(ImageProcessorConfig::default()).expect("default config is valid")
    }
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        config.validate().map_err(DataError::Preprocess)?;
        // transformers fuses rescale into normalise: mean' = mean / rescale, std' = std /
        // rescale (f32 tensors), then (x - mean') / std' in f32.
        let inv = (1.0 / config.rescale_factor) as f32;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            let (mean, std) = (config.image_mean[c] * inv, config.image_std[c] * inv);
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - mean) / std;
            }
        }
        Ok(Self { config, lut })
    }

    /// The (height, width) an image of `height` x `width` is resized to.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32)> {
        let c = &self.config;
        if !c.do_resize {
            let f = c.patch_size * c.merge_size;
            if !height.is_multiple_of(f) || !width.is_multiple_of(f) {
                return Err(DataError::Preprocess(format!(
                    "do_resize is off but {width}x{height} is not a multiple of {f}"
                )));
            }
            return Ok((height, width));
        }
        smart_resize(height, width, c.patch_size * c.merge_size, c.min_pixels, c.max_pixels)
            .map_err(DataError::Preprocess)
    }

    /// One image: resized, normalised and patchified with its frame repeated in time.
    pub fn preprocess_image(&self, img: &RgbImage) -> Result<VisionInput> {
        let frames = vec![img; self.config.temporal_patch_size as usize];
        let (h, w) = self.target_size(img.height(), img.width())?;
        self.patchify_frames(&frames, h, w)
    }

    /// Frames of one video or volume (all the same size, a multiple of the temporal patch
    /// in number), sized with the video budget over all frames (Qwen3-VL's video
    /// processor) and patchified with t = frames / temporal_patch_size.
    pub fn preprocess_video(&self, frames: &[&RgbImage]) -> Result<VisionInput> {
        let c = &self.config;
        let first = frames.first().ok_or_else(|| DataError::Preprocess("a video without frames".into()))?;
        let (h, w) = if c.do_resize {
            smart_resize_video(
                frames.len() as u32,
                first.height(),
                first.width(),
                c.temporal_patch_size,
                c.patch_size * c.merge_size,
                c.video_min_pixels,
                c.video_max_pixels,
            )
            .map_err(DataError::Preprocess)?
        } else {
            self.target_size(first.height(), first.width())?
        };
        self.patchify_frames(frames, h, w)
    }

    fn patchify_frames(&self, frames: &[&RgbImage], h: u32, w: u32) -> Result<VisionInput> {
        let c = &self.config;
        let tp = c.temporal_patch_size as usize;
        if frames.is_empty() || !frames.len().is_multiple_of(tp) {
            return Err(DataError::Preprocess(format!("{} frames: need a positive multiple of {tp}", frames.len())));
        }
        let (w0, h0) = frames[0].dimensions();
        if let Some(f) = frames.iter().find(|f| f.dimensions() != (w0, h0)) {
            return Err(DataError::Preprocess(format!(
                "frames differ in size: {w0}x{h0} and {}x{}",
                f.width(),
                f.height()
            )));
        }
        // Resize each distinct frame once: a still image is one frame repeated in time.
        let mut resized: Vec<std::borrow::Cow<'_, RgbImage>> = Vec::with_capacity(frames.len());
        let mut source: Vec<usize> = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            match frames[..i].iter().position(|g| std::ptr::eq(*g, *f)) {
                Some(j) => source.push(source[j]),
                None => {
                    source.push(resized.len());
                    resized.push(if (w, h) == (w0, h0) {
                        std::borrow::Cow::Borrowed(*f)
                    } else {
                        std::borrow::Cow::Owned(resize_bicubic_aa(f, w, h))
                    });
                }
            }
        }
        let refs: Vec<&RgbImage> = source.iter().map(|&j| resized[j].as_ref()).collect();
        Ok(VisionInput {
            pixel_values: self.patchify(&refs),
            grid_thw: [(frames.len() / tp) as u32, h / c.patch_size, w / c.patch_size],
            original_size: (w0, h0),
            resized_size: (w, h),
        })
    }

    /// Rows ordered (t, block row, block col, merge row, merge col); values (c, t, py, px).
    fn patchify(&self, frames: &[&RgbImage]) -> Vec<f32> {
        let c = &self.config;
        let (p, m, tp) = (c.patch_size as usize, c.merge_size as usize, c.temporal_patch_size as usize);
        let (w, h) = frames[0].dimensions();
        let (gh, gw) = (h as usize / p, w as usize / p);
        let gt = frames.len() / tp;
        let dim = self.config.patch_dim();
        let mut out = vec![0f32; gt * gh * gw * dim];
        let mut row = 0;
        for t in 0..gt {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (py0, px0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                            let dst = &mut out[row * dim..(row + 1) * dim];
                            let block = p * p;
                            for ch in 0..3 {
                                let lut = &self.lut[ch];
                                let group = &frames[t * tp..(t + 1) * tp];
                                for (ti, frame) in group.iter().enumerate() {
                                    let at = (ch * tp + ti) * block;
                                    // A frame repeated in time (a still image) repeats its values.
                                    if ti > 0 && std::ptr::eq(*frame, group[ti - 1]) {
                                        dst.copy_within(at - block..at, at);
                                        continue;
                                    }
                                    let raw = frame.as_raw();
                                    for py in 0..p {
                                        let base = ((py0 + py) * w as usize + px0) * 3 + ch;
                                        let line = &mut dst[at + py * p..at + (py + 1) * p];
                                        for (px, v) in line.iter_mut().enumerate() {
                                            *v = lut[raw[base + px * 3] as usize];
                                        }
                                    }
                                }
                            }
                            row += 1;
                        }
                    }
                }
            }
        }
        out
    }

    /// Decodes and preprocesses a sample's images and videos, and maps its boxes and mask
    /// into the first image's resized coordinates.
    pub fn prepare(&self, s: &Sample) -> Result<PreparedMedia> {
        let mut images = Vec::with_capacity(s.images.len());
        for (i, bytes) in s.images.iter().enumerate() {
            let img = decode_rgb(bytes).map_err(|e| DataError::Preprocess(format!("images[{i}]: {e}")))?;
            images.push(self.preprocess_image(&img)?);
        }
        let mut videos = Vec::with_capacity(s.videos.len());
        for (v, frames) in s.videos.iter().enumerate() {
            let picked = sample_frame_indices(frames.len(), self.config.video_frames);
            let mut decoded: Vec<(usize, RgbImage)> = Vec::new();
            for &i in &picked {
                if decoded.last().map(|(j, _)| *j) != Some(i) {
                    let img =
                        decode_rgb(&frames[i]).map_err(|e| DataError::Preprocess(format!("videos[{v}][{i}]: {e}")))?;
                    decoded.push((i, img));
                }
            }
            let refs: Vec<&RgbImage> =
                picked.iter().map(|i| &decoded.iter().find(|(j, _)| j == i).expect("decoded above").1).collect();
            videos.push(self.preprocess_video(&refs)?);
        }
        let reference = images.first().or(videos.first());
        let (boxes, mask) = match reference {
            Some(r) => {
                let boxes = s.boxes.iter().map(|b| map_box(b, r.original_size, r.resized_size)).collect();
                let mask = match &s.mask {
                    Some(bytes) => {
                        let m = image::load_from_memory(bytes)
                            .map_err(|e| DataError::Preprocess(format!("mask: {e}")))?
                            .into_luma8();
                        Some(resize_mask(&m, r.resized_size.0, r.resized_size.1))
                    }
                    None => None,
                };
                (boxes, mask)
            }
            None => (s.boxes.clone(), None),
        };
        Ok(PreparedMedia { images, videos, boxes, mask })
    }
}

/// `count` frame indices spread uniformly over `total` frames (segment centres), in
/// order; with fewer frames than asked, frames repeat.
pub fn sample_frame_indices(total: usize, count: usize) -> Vec<usize> {
    if total == 0 {
        return Vec::new();
    }
    (0..count).map(|i| (((2 * i + 1) * total) / (2 * count)).min(total - 1)).collect()
}

/// A box in original pixels -> the same box in resized pixels.
pub fn map_box(b: &LabeledBox, original: (u32, u32), resized: (u32, u32)) -> LabeledBox {
    let sx = resized.0 as f32 / original.0 as f32;
    let sy = resized.1 as f32 / original.1 as f32;
    let [x1, y1, x2, y2] = b.bbox;
    LabeledBox { bbox: [x1 * sx, y1 * sy, x2 * sx, y2 * sy], label: b.label.clone() }
}

/// Nearest-neighbour resize of a mask (source pixel = floor((x + 0.5) * in / out), as
/// PIL's NEAREST), binarised to 0 / 255.
pub fn resize_mask(mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    let (w0, h0) = mask.dimensions();
    GrayImage::from_fn(width, height, |x, y| {
        let sx = (((x as u64 * 2 + 1) * w0 as u64) / (2 * width as u64)).min(w0 as u64 - 1) as u32;
        let sy = (((y as u64 * 2 + 1) * h0 as u64) / (2 * height as u64)).min(h0 as u64 - 1) as u32;
        image::Luma([if mask.get_pixel(sx, sy).0[0] > 0 { 255 } else { 0 }])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_rows_follow_merge_block_order() {
        // 64x64 image whose pixel value encodes its 16x16 patch index (gy * 4 + gx).
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let v = ((y / 16) * 4 + (x / 16)) as u8 * 10;
            image::Rgb([v, v, v])
        });
        let proc = ImageProcessor::new(ImageProcessorConfig { min_pixels: 0, ..Default::default() }).unwrap();
        let out = proc.preprocess_image(&img).unwrap();
        assert_eq!(out.grid_thw, [1, 4, 4]);
        let first_of_row = |r: usize| out.pixel_values[r * 1536];
        let patch_of = |gy: usize, gx: usize| proc.lut[0][(gy * 4 + gx) * 10];
        // Block (0,0) holds patches (0,0), (0,1), (1,0), (1,1); then block (0,1).
        let expected = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 0)];
        for (r, (gy, gx)) in expected.iter().enumerate() {
            assert_eq!(first_of_row(r), patch_of(*gy, *gx), "row {r}");
        }
        // Both temporal copies of a row are identical.
        let row = &out.pixel_values[..1536];
        assert_eq!(row[..256], row[256..512]);
    }

    #[test]
    fn preprocessor_config_json_in_both_serialisations() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.json");
        std::fs::write(
            &new,
            r#"{"image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16,
            "size": {"shortest_edge": 1024, "longest_edge": 9999}, "image_mean": [0.5, 0.5, 0.5]}"#,
        )
        .unwrap();
        let c = ImageProcessorConfig::from_json_file(&new).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels, c.patch_size), (1024, 9999, 16));
        let old = dir.path().join("old.json");
        std::fs::write(&old, r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14}"#).unwrap();
        let c = ImageProcessorConfig::from_json_file(&old).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels, c.patch_size), (3136, 12845056, 14));
        let both = dir.path().join("both.json");
        std::fs::write(
            &both,
            r#"{"min_pixels": 3136, "max_pixels": 12845056, "size": {"shortest_edge": 56, "longest_edge": 28}}"#,
        )
        .unwrap();
        let c = ImageProcessorConfig::from_json_file(&both).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (3136, 12845056), "min/max_pixels win over size, as in 5.24");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"size": {"shortest_edge": 10, "longest_edge": 5}}"#).unwrap();
        let err = ImageProcessorConfig::from_json_file(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("min_pixels"), "{err}");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(ImageProcessorConfig::from_json_file(&bad).unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn normalisation_maps_0_and_255_to_minus_one_and_one() {
        let p = ImageProcessor::default();
        assert_eq!(p.lut[0][0], -1.0);
        assert_eq!(p.lut[2][255], 1.0);
    }

    #[test]
    fn frame_indices_are_uniform_and_even_counted() {
        assert_eq!(sample_frame_indices(100, 4), vec![12, 37, 62, 87]);
        assert_eq!(sample_frame_indices(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(sample_frame_indices(0, 4), Vec::<usize>::new());
    }

    #[test]
    fn boxes_and_masks_follow_the_resize() {
        let b = LabeledBox { bbox: [10.0, 20.0, 50.0, 40.0], label: "x".into() };
        let m = map_box(&b, (100, 200), (200, 100));
        assert_eq!(m.bbox, [20.0, 10.0, 100.0, 20.0]);
        let mut mask = GrayImage::new(4, 4);
        mask.put_pixel(1, 2, image::Luma([7]));
        let r = resize_mask(&mask, 8, 8);
        let on: Vec<(u32, u32)> = r.enumerate_pixels().filter(|p| p.2 .0[0] == 255).map(|p| (p.0, p.1)).collect();
        assert_eq!(on, vec![(2, 4), (3, 4), (2, 5), (3, 5)]);
    }

    #[test]
    fn video_grid_has_t_over_two() {
        let f = RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]));
        let proc = ImageProcessor::new(ImageProcessorConfig { min_pixels: 0, ..Default::default() }).unwrap();
        let proc = ImageProcessor::new(ImageProcessorConfig { video_min_pixels: 0, ..proc.config }).unwrap();
        let v = proc.preprocess_video(&[&f, &f, &f, &f]).unwrap();
        assert_eq!(v.grid_thw, [2, 4, 4]);
        assert_eq!(v.num_tokens(2), 8);
        assert!(proc.preprocess_video(&[&f, &f, &f]).is_err());
    }
}
