//! Grounding reward: IoU of the predicted evidence boxes against ground-truth boxes or a
//! segmentation mask (docs/drpo.md section 3, "IoU").
//!
//! Coordinates are pixels of the resized image the model saw. A [`Mask`] is decoded once
//! per sample into row runs and shared by every response of its group; a predicted box
//! then costs a binary search per box row, never a pass over the mask's pixels.

use std::path::Path;

use serde_json::Value;

use crate::json_block::{first_parsed_value, FencedBlock};
use crate::RewardError;

/// `[x1, y1, x2, y2]` in pixels.
pub type BBox = [f64; 4];

/// How the per-box IoUs of one response combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IouAggregation {
    /// Mean over predicted boxes, malformed ones counting 0 (the QoQ-Med code).
    #[default]
    Mean,
    /// Best predicted box (the paper).
    Max,
}

/// What a response is grounded against.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroundingTarget<'a> {
    pub boxes: &'a [BBox],
    /// Used instead of `boxes` when present and non-empty; its size is the image size.
    pub mask: Option<&'a Mask>,
}

/// The predicted boxes of a response: the `bbox_2d` entries of the first parseable fenced
/// block (a list of objects, a single object, or `{"objects_of_interest": [...]}`). An entry
/// that is not four finite numbers is `None`: it scores 0 but still counts.
pub fn predicted_boxes(blocks: &[FencedBlock<'_>], lenient: bool) -> Vec<Option<BBox>> {
    let Some(value) = first_parsed_value(blocks, lenient) else { return Vec::new() };
    let items: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(o) if o.contains_key("bbox_2d") => vec![&value],
        Value::Object(o) => match o.get("objects_of_interest") {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items.into_iter().filter_map(|item| item.as_object()?.get("bbox_2d")).map(as_bbox).collect()
}

/// Four finite numbers, or `None`.
pub fn as_bbox(value: &Value) -> Option<BBox> {
    let coords = value.as_array()?;
    if coords.len() != 4 {
        return None;
    }
    let mut b = [0.0; 4];
    for (slot, c) in b.iter_mut().zip(coords) {
        *slot = c.as_f64().filter(|x| x.is_finite())?;
    }
    Some(b)
}

/// IoU reward of predicted boxes against the target; 0 with no predicted box or nothing
/// to compare against.
pub fn iou_reward(predicted: &[Option<BBox>], target: &GroundingTarget<'_>, aggregation: IouAggregation) -> f64 {
    if predicted.is_empty() {
        return 0.0;
    }
    let per_box = |b: &Option<BBox>| -> f64 {
        let Some(b) = b else { return 0.0 };
        match target.mask {
            Some(mask) if mask.area() > 0 => mask.box_iou(b),
            _ => target.boxes.iter().map(|gt| box_iou(b, gt)).fold(0.0, f64::max),
        }
    };
    let ious = predicted.iter().map(per_box);
    match aggregation {
        IouAggregation::Mean => ious.sum::<f64>() / predicted.len() as f64,
        IouAggregation::Max => ious.fold(0.0, f64::max),
    }
}

/// Corners in order.
fn normalized(b: &BBox) -> BBox {
    [b[0].min(b[2]), b[1].min(b[3]), b[0].max(b[2]), b[1].max(b[3])]
}

/// Continuous IoU of two boxes; 0 for degenerate ones. Corner order does not matter (the
/// original scored reversed boxes 0 here while swapping them against masks). Boxes are
/// not clipped to the image: the spec and the original compare them as given.
pub fn box_iou(a: &BBox, b: &BBox) -> f64 {
    let (a, b) = (normalized(a), normalized(b));
    let iw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih = a[3].min(b[3]) - a[1].max(b[1]);
    if !(iw > 0.0 && ih > 0.0) {
        return 0.0;
    }
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    // Huge coordinates can overflow the areas to infinity; such a box earns nothing.
    if union.is_finite() && union > 0.0 {
        (inter / union).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A binary segmentation mask stored as horizontal runs of region pixels, row by row.
///
/// Segmentation masks are blobs, a run or two per row, so a 512x512 mask takes a few KB
/// instead of the 256 KB of its pixels, and counting the region pixels inside a box costs
/// a binary search per box row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    width: u32,
    height: u32,
    /// Half-open `[start, end)` runs of region pixels, row after row.
    runs: Vec<(u32, u32)>,
    /// `runs[row_start[y]..row_start[y + 1]]` are the runs of row `y`.
    row_start: Vec<u32>,
    area: u64,
}

impl Mask {
    /// A mask of `width x height` whose region is where `is_region(x, y)` holds.
    pub fn from_fn(width: u32, height: u32, mut is_region: impl FnMut(u32, u32) -> bool) -> Result<Self, RewardError> {
        if width == 0 || height == 0 || width as u64 * height as u64 >= u32::MAX as u64 {
            return Err(RewardError::Mask(format!("a {width}x{height} mask is empty or too large")));
        }
        let mut runs = Vec::new();
        let mut row_start = Vec::with_capacity(height as usize + 1);
        let mut area = 0u64;
        for y in 0..height {
            row_start.push(runs.len() as u32);
            let mut run_start = None;
            for x in 0..=width {
                let inside = x < width && is_region(x, y);
                match (inside, run_start) {
                    (true, None) => run_start = Some(x),
                    (false, Some(start)) => {
                        runs.push((start, x));
                        area += (x - start) as u64;
                        run_start = None;
                    }
                    _ => {}
                }
            }
        }
        row_start.push(runs.len() as u32);
        runs.shrink_to_fit();
        Ok(Self { width, height, runs, row_start, area })
    }

    /// Decode a PNG (or JPEG) mask: a pixel is in the region when any colour channel is
    /// non-zero (alpha is ignored).
    pub fn from_image_bytes(bytes: &[u8]) -> Result<Self, RewardError> {
        let img = image::load_from_memory(bytes).map_err(|e| RewardError::Mask(e.to_string()))?;
        let (width, height) = (img.width(), img.height());
        let color = img.color();
        let channels = color.channel_count() as usize;
        let bytes_per_channel = color.bytes_per_pixel() as usize / channels;
        let colour_bytes = bytes_per_channel * (channels - color.has_alpha() as usize);
        let raw = img.as_bytes();
        let pixel_bytes = color.bytes_per_pixel() as usize;
        Self::from_fn(width, height, |x, y| {
            let at = (y as usize * width as usize + x as usize) * pixel_bytes;
            raw[at..at + colour_bytes].iter().any(|&b| b != 0)
        })
    }

    /// Encode as an 8-bit grey PNG (255 in the region), which [`Self::from_image_bytes`]
    /// reads back unchanged: how `eval` hands a sample's mask to `score`.
    pub fn to_png(&self) -> Result<Vec<u8>, RewardError> {
        let mut pixels = vec![0u8; self.width as usize * self.height as usize];
        for y in 0..self.height {
            let row = &self.runs[self.row_start[y as usize] as usize..self.row_start[y as usize + 1] as usize];
            for &(start, end) in row {
                let at = y as usize * self.width as usize;
                pixels[at + start as usize..at + end as usize].fill(255);
            }
        }
        let img = image::GrayImage::from_raw(self.width, self.height, pixels)
            .ok_or_else(|| RewardError::Mask("mask buffer does not match its size".into()))?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| RewardError::Mask(e.to_string()))?;
        Ok(out.into_inner())
    }

    /// Read and decode a mask file.
    pub fn open(path: &Path) -> Result<Self, RewardError> {
        let bytes = std::fs::read(path).map_err(|e| RewardError::Mask(format!("{}: {e}", path.display())))?;
        Self::from_image_bytes(&bytes).map_err(|e| RewardError::Mask(format!("{}: {e}", path.display())))
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Region pixels in the inclusive rectangle `x1..=x2, y1..=y2` (in bounds).
    fn count(&self, x1: u32, y1: u32, x2: u32, y2: u32) -> u64 {
        let mut total = 0u64;
        for y in y1..=y2 {
            let row = &self.runs[self.row_start[y as usize] as usize..self.row_start[y as usize + 1] as usize];
            // Runs are sorted and disjoint: skip those ending at or before x1.
            let first = row.partition_point(|&(_, end)| end <= x1);
            for &(start, end) in &row[first..] {
                if start > x2 {
                    break;
                }
                total += (end.min(x2 + 1) - start.max(x1)) as u64;
            }
        }
        total
    }

    /// Number of region pixels.
    pub fn area(&self) -> u64 {
        self.area
    }

    /// Whether pixel `(x, y)` is in the region.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.count(x, y, x, y) == 1
    }

    /// Nearest-neighbour resize (pixel centres), as the data pipeline resizes masks.
    pub fn resized(&self, width: u32, height: u32) -> Result<Self, RewardError> {
        let source = |x: u32, size: u32, source_size: u32| {
            (((x as u64 * 2 + 1) * source_size as u64) / (2 * size as u64)).min(source_size as u64 - 1) as u32
        };
        Self::from_fn(width, height, |x, y| self.get(source(x, width, self.width), source(y, height, self.height)))
    }

    /// Pixel IoU of a rasterised box with the region. The box is truncated to integers,
    /// clamped to the image, put in corner order and covers `x1..=x2, y1..=y2`; as in the
    /// original, a box that is degenerate after clamping (`x1 == x2` or `y1 == y2`)
    /// covers nothing.
    pub fn box_iou(&self, b: &BBox) -> f64 {
        let clamp = |v: f64, size: u32| (v.trunc().max(0.0) as u64).min(size as u64 - 1) as u32;
        let (xa, xb) = (clamp(b[0], self.width), clamp(b[2], self.width));
        let (ya, yb) = (clamp(b[1], self.height), clamp(b[3], self.height));
        let (x1, x2, y1, y2) = (xa.min(xb), xa.max(xb), ya.min(yb), ya.max(yb));
        let area = self.area();
        if x1 == x2 || y1 == y2 || area == 0 {
            return 0.0;
        }
        let inter = self.count(x1, y1, x2, y2);
        let box_area = (x2 - x1 + 1) as u64 * (y2 - y1 + 1) as u64;
        inter as f64 / (box_area + area - inter) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_block::fenced_blocks;

    fn boxes(text: &str) -> Vec<Option<BBox>> {
        predicted_boxes(&fenced_blocks(text), false)
    }

    #[test]
    fn accepted_shapes() {
        let list = r#"```json
[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"label": "no box"}, 7, {"bbox_2d": [1, 2, 3]}]
```"#;
        assert_eq!(boxes(list), vec![Some([1.0, 2.0, 3.0, 4.0]), None]);
        assert_eq!(boxes(r#"```json {"bbox_2d": [0, 0, 5, 5]} ```"#), vec![Some([0.0, 0.0, 5.0, 5.0])]);
        let ooi = r#"```json {"objects_of_interest": [{"bbox_2d": [0, 0, 1, 1.5]}]}```"#;
        assert_eq!(boxes(ooi), vec![Some([0.0, 0.0, 1.0, 1.5])]);
        assert_eq!(boxes(r#"```json {"other": 1}```"#), vec![]);
        assert_eq!(
            boxes(r#"```json [{"bbox_2d": ["1", 2, 3, 4]}, {"bbox_2d": [1, 2, 3, 4, 5]}]```"#),
            vec![None, None]
        );
        assert_eq!(boxes(r#"```json [{"bbox_2d": [1e400, 0, 1, 1]}]```"#), vec![]);
    }

    #[test]
    fn box_iou_values() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(box_iou(&a, &a), 1.0);
        assert_eq!(box_iou(&a, &[5.0, 0.0, 15.0, 10.0]), 50.0 / 150.0);
        assert_eq!(box_iou(&a, &[10.0, 10.0, 0.0, 0.0]), 1.0);
        assert_eq!(box_iou(&a, &[10.0, 0.0, 20.0, 10.0]), 0.0);
        assert_eq!(box_iou(&a, &[3.0, 3.0, 3.0, 9.0]), 0.0);
        assert_eq!(box_iou(&a, &[-1e308, -1e308, 1e308, 1e308]), 0.0, "area overflows to infinity");
        assert!(box_iou(&a, &[-1e150, -1e150, 1e150, 1e150]) < 1e-290);
    }

    #[test]
    fn mask_rasterisation_follows_the_spec() {
        // 10x10 image, region = the 4x4 square x, y in 2..=5.
        let m = Mask::from_fn(10, 10, |x, y| (2..=5).contains(&x) && (2..=5).contains(&y)).unwrap();
        assert_eq!(m.area(), 16);
        assert_eq!(m.box_iou(&[2.0, 2.0, 5.0, 5.0]), 1.0);
        assert_eq!(m.box_iou(&[5.9, 5.9, 2.2, 2.7]), 1.0, "truncated, then swapped");
        assert_eq!(m.box_iou(&[2.0, 2.0, 3.0, 5.0]), 8.0 / 16.0);
        assert_eq!(m.box_iou(&[-50.0, -50.0, 1e12, 1e12]), 16.0 / 100.0, "clamped to the image");
        assert_eq!(m.box_iou(&[3.0, 3.0, 3.0, 3.0]), 0.0, "degenerate");
        assert_eq!(m.box_iou(&[20.0, 20.0, 30.0, 30.0]), 0.0, "outside: clamped to a degenerate corner");
    }

    #[test]
    fn aggregation_and_fallbacks() {
        let gt = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
        let empty = Mask::from_fn(4, 4, |_, _| false).unwrap();
        let target = GroundingTarget { boxes: &gt, mask: Some(&empty) };
        let pred = [Some([20.0, 20.0, 30.0, 30.0]), None, Some([0.0, 0.0, 5.0, 10.0])];
        assert_eq!(iou_reward(&pred, &target, IouAggregation::Mean), 1.5 / 3.0);
        assert_eq!(iou_reward(&pred, &target, IouAggregation::Max), 1.0);
        assert_eq!(iou_reward(&[], &target, IouAggregation::Max), 0.0);
        let nothing = GroundingTarget::default();
        assert_eq!(iou_reward(&pred, &nothing, IouAggregation::Max), 0.0);
    }

    #[test]
    fn masks_round_trip_through_png() {
        let mask = Mask::from_fn(7, 5, |x, y| (x + y) % 3 == 0 || (x == 6 && y == 4)).unwrap();
        let back = Mask::from_image_bytes(&mask.to_png().unwrap()).unwrap();
        assert_eq!(back, mask);
        assert_eq!(back.area(), mask.area());
    }

    #[test]
    fn masks_decode_any_colour_channel_and_resize() {
        let mut img = image::RgbaImage::new(3, 2);
        img.put_pixel(0, 0, image::Rgba([1, 0, 0, 255]));
        img.put_pixel(2, 1, image::Rgba([0, 0, 0, 255]));
        img.put_pixel(1, 1, image::Rgba([0, 0, 9, 0]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let m = Mask::from_image_bytes(&png).unwrap();
        assert!(m.get(0, 0) && m.get(1, 1) && !m.get(2, 1) && !m.get(1, 0));
        let big = m.resized(6, 4).unwrap();
        assert_eq!(big.area(), 8);
        assert!(big.get(1, 1) && big.get(2, 2) && !big.get(4, 0));
        assert!(Mask::from_image_bytes(b"not a png").is_err());
    }
}
