//! Decoding to 8-bit RGB the way transformers' processor does: images with an alpha
//! channel (or a transparent palette entry) are composited onto opaque white with
//! Pillow's integer `alpha_composite` arithmetic; grey is replicated to three channels.

use image::{DynamicImage, RgbImage};

/// Pillow's `SHIFTFORDIV255`: (a + a/256) / 256, an exact a/255 for the ranges used.
#[inline]
fn shift_for_div255(a: u32) -> u32 {
    ((a >> 8) + a) >> 8
}

/// One channel of `alpha_composite(white, src)` (Pillow AlphaComposite.c, 7 precision bits).
#[inline]
fn over_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return 255;
    }
    let a = a as u32;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c as u32 * coef1 + 255 * coef2;
    (shift_for_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

/// Decodes PNG / JPEG bytes to RGB8.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    let img = image::load_from_memory(bytes).map_err(|e| format!("undecodable image: {e}"))?;
    Ok(to_rgb(img))
}

/// Converts any decoded image to RGB8, compositing transparency onto white.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = p.0;
        o.0 = if a == 255 { [r, g, b] } else { [over_white(r, a), over_white(g, a), over_white(b, a)] };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::over_white;

    #[test]
    fn composite_endpoints() {
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(200, 255), 200);
        // Half-transparent black over white is mid grey.
        assert!((127..=128).contains(&over_white(0, 128)));
    }
}
