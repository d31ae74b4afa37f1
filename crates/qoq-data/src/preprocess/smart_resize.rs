//! Qwen2-VL / Qwen3-VL `smart_resize`: the output size of an image, a multiple of
//! `factor` (patch 16 x merge 2 = 32) on both sides with the pixel count in
//! [min_pixels, max_pixels], aspect ratio kept as closely as possible.

/// `(height, width)` after resizing, or an error for an aspect ratio above 200.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), String> {
    if height == 0 || width == 0 {
        return Err(format!("image is {width}x{height}: empty"));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(format!("aspect ratio of a {width}x{height} image exceeds 200"));
    }
    let (h_bar, w_bar) = fit(h, w, 1.0, 1.0, f, min_pixels, max_pixels);
    if h_bar < f || w_bar < f {
        // transformers would go on with an empty image and fail later; say so here.
        return Err(format!("a {width}x{height} image resizes to {w_bar}x{h_bar}: raise min_pixels"));
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// The rounding and budget rule both variants share: sides rounded (half to even) to
/// multiples of `f`; if `t_bar` frames of that size exceed `max_pixels`, scale the `t`
/// real frames down into it (floor, at least `f`); if below `min_pixels`, up (ceil).
fn fit(h: f64, w: f64, t: f64, t_bar: f64, f: f64, min_pixels: u64, max_pixels: u64) -> (f64, f64) {
    let h_bar = (h / f).round_ties_even() * f;
    let w_bar = (w / f).round_ties_even() * f;
    if t_bar * h_bar * w_bar > max_pixels as f64 {
        let beta = (t * h * w / max_pixels as f64).sqrt();
        (f.max((h / beta / f).floor() * f), f.max((w / beta / f).floor() * f))
    } else if t_bar * h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (t * h * w)).sqrt();
        ((h * beta / f).ceil() * f, (w * beta / f).ceil() * f)
    } else {
        (h_bar, w_bar)
    }
}

/// Qwen3-VL's video `smart_resize`: the pixel budget covers all `num_frames` frames
/// (rounded to the temporal patch), and sides shorter than `factor` are first scaled up.
pub fn smart_resize_video(
    num_frames: u32,
    height: u32,
    width: u32,
    temporal_factor: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), String> {
    if num_frames < temporal_factor {
        return Err(format!("{num_frames} frames: need at least {temporal_factor}"));
    }
    if height == 0 || width == 0 {
        return Err(format!("frames are {width}x{height}: empty"));
    }
    let (mut h, mut w, f) = (height as f64, width as f64, factor as f64);
    if h < f || w < f {
        let scale = (f / h).max(f / w);
        h = (h * scale).trunc();
        w = (w * scale).trunc();
    }
    if h.max(w) / h.min(w) > 200.0 {
        return Err(format!("aspect ratio of {width}x{height} frames exceeds 200"));
    }
    let t = num_frames as f64;
    // Python's round() rounds half to even.
    let t_bar = (t / temporal_factor as f64).round_ties_even() * temporal_factor as f64;
    let (h_bar, w_bar) = fit(h, w, t, t_bar, f, min_pixels, max_pixels);
    Ok((h_bar as u32, w_bar as u32))
}

#[cfg(test)]
mod tests {
    use super::{smart_resize, smart_resize_video};

    #[test]
    fn video_budget_covers_all_frames() {
        // 4 frames of 512x512 = 1048576 pixels > 786432: shrink to fit.
        let (h, w) = smart_resize_video(4, 512, 512, 2, 32, 131072, 786432).unwrap();
        assert!(4 * h as u64 * w as u64 <= 786432 && h % 32 == 0, "{h}x{w}");
        assert_eq!((h, w), (416, 416));
        assert!(smart_resize_video(1, 64, 64, 2, 32, 0, 1 << 30).is_err());
    }

    const MIN: u64 = 65536;
    const MAX: u64 = 16777216;

    #[test]
    fn keeps_sizes_that_already_fit() {
        assert_eq!(smart_resize(512, 512, 32, MIN, MAX), Ok((512, 512)));
    }

    #[test]
    fn rounds_half_to_even() {
        // 80/32 = 2.5 -> 2 (even), 112/32 = 3.5 -> 4.
        assert_eq!(smart_resize(80 * 8, 112 * 8, 32, 0, MAX), Ok((640, 896)));
        assert_eq!(smart_resize(80, 112, 32, 0, MAX), Ok((64, 128)));
    }

    #[test]
    fn scales_up_small_and_down_large() {
        assert_eq!(smart_resize(1, 1, 32, MIN, MAX), Ok((256, 256)));
        let (h, w) = smart_resize(3000, 2000, 32, MIN, 524288).unwrap();
        assert!(h as u64 * w as u64 <= 524288 && h % 32 == 0 && w % 32 == 0);
        assert_eq!((h, w), (864, 576));
    }

    #[test]
    fn rejects_extreme_aspect_ratios() {
        assert!(smart_resize(1, 201, 32, MIN, MAX).is_err());
        assert!(smart_resize(0, 10, 32, MIN, MAX).is_err());
        assert!(smart_resize(10, 10, 32, 0, MAX).is_err(), "rounds to 0x0 without a minimum");
    }
}
