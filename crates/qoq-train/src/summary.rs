//! The image summary of a rollout: the image the model saw, true boxes in green and the
//! response's predicted boxes in red.

use image::{imageops, Rgb, RgbImage};
use qoq_rewards::grounding::{predicted_boxes, BBox};
use qoq_rewards::json_block::fenced_blocks;

use crate::prompts::Prompt;

const TRUE: Rgb<u8> = Rgb([40, 220, 40]);
const PREDICTED: Rgb<u8> = Rgb([255, 40, 40]);

/// None when the prompt has no decodable image.
pub fn rollout_image(prompt: &Prompt, response: &str) -> Option<RgbImage> {
    let bytes = prompt.image_bytes.as_ref()?;
    let (w, h) = prompt.images.first()?.resized_size;
    let original = image::load_from_memory(bytes).ok()?.to_rgb8();
    let mut img = imageops::resize(&original, w, h, imageops::FilterType::Triangle);
    for b in &prompt.boxes {
        draw_box(&mut img, b, TRUE);
    }
    let blocks = fenced_blocks(response);
    for b in predicted_boxes(&blocks, true).into_iter().flatten() {
        draw_box(&mut img, &b, PREDICTED);
    }
    Some(img)
}

/// A one-pixel outline of `b` (pixel coordinates, any corner order), clamped to the image.
pub fn draw_box(img: &mut RgbImage, b: &BBox, colour: Rgb<u8>) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || !b.iter().all(|v| v.is_finite()) {
        return;
    }
    let clamp = |v: f64, max: u32| (v.max(0.0) as u32).min(max - 1);
    let (x1, x2) = (clamp(b[0].min(b[2]), w), clamp(b[0].max(b[2]), w));
    let (y1, y2) = (clamp(b[1].min(b[3]), h), clamp(b[1].max(b[3]), h));
    for x in x1..=x2 {
        img.put_pixel(x, y1, colour);
        img.put_pixel(x, y2, colour);
    }
    for y in y1..=y2 {
        img.put_pixel(x1, y, colour);
        img.put_pixel(x2, y, colour);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outline_is_drawn_and_clamped() {
        let mut img = RgbImage::new(10, 10);
        draw_box(&mut img, &[8.0, 2.0, 20.0, 5.0], PREDICTED);
        assert_eq!(*img.get_pixel(9, 2), PREDICTED);
        assert_eq!(*img.get_pixel(8, 4), PREDICTED);
        assert_eq!(*img.get_pixel(5, 5), Rgb([0, 0, 0]));
        draw_box(&mut img, &[f64::NAN, 0.0, 1.0, 1.0], TRUE);
    }
}
