//! Antialiased bicubic resize of 8-bit RGB, bit-exact with what transformers' Qwen-VL
//! processor gets: torchvision resizes uint8 CPU tensors with BICUBIC through torch's
//! native uint8 kernel (`_upsample_bicubic2d_aa`, the Pillow-SIMD-derived AVX path), which
//! works in fixed point:
//!
//! - per axis, scale = in / out (f64); support = 2 * scale when shrinking, else 2;
//!   for output i: center = scale * (i + 0.5), xmin = max(trunc(center - support + 0.5), 0),
//!   xmax = min(trunc(center + support + 0.5), in); w_j = keys((j + xmin - center + 0.5) / max(scale, 1))
//!   with Keys' cubic (a = -0.5), normalised to sum 1 (all in f64);
//! - the weights become i16 with the largest precision p < 22 such that
//!   round(w_max * 2^(p+1)) < 2^15, w_max being the largest weight of the axis;
//! - a pass computes clamp((2^(p-1) + sum src * w) >> p, 0, 255) into u8;
//! - horizontal pass first, then vertical; an axis whose size does not change is skipped.

use image::RgbImage;

/// Fixed-point taps of one axis.
struct AxisWeights {
    /// First source index of each output index.
    start: Vec<usize>,
    /// Taps of each output index, `taps` apart in `weights`.
    len: Vec<usize>,
    taps: usize,
    weights: Vec<i16>,
    precision: u32,
}

fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

fn axis_weights(input: usize, output: usize) -> AxisWeights {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let taps = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut start = Vec::with_capacity(output);
    let mut len = Vec::with_capacity(output);
    let mut wf = vec![0f64; output * taps];
    let mut w_max = 0f64;
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        // `as i64` truncates toward zero, like the C++ static_cast.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(input as i64) - xmin;
        let xsize = xsize.clamp(0, taps as i64) as usize;
        let w = &mut wf[i * taps..i * taps + xsize];
        let mut total = 0.0;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = keys_cubic((j as f64 + xmin as f64 - center + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut() {
                *wj /= total;
                w_max = w_max.max(*wj);
            }
        }
        start.push(xmin as usize);
        len.push(xsize);
    }
    let mut precision = 0;
    while precision < 22 {
        let next = (0.5 + w_max * (1u64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let weights = wf
        .iter()
        .map(|&w| {
            let v = w * (1u64 << precision) as f64;
            (if v < 0.0 { (v - 0.5) as i32 } else { (v + 0.5) as i32 }) as i16
        })
        .collect();
    AxisWeights { start, len, taps, weights, precision }
}

#[inline]
fn clamp_shift(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Resizes `src` to `width` x `height` (antialiased bicubic, torch uint8 semantics).
pub fn resize_bicubic_aa(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = src.dimensions();
    let mut current: std::borrow::Cow<'_, RgbImage> = std::borrow::Cow::Borrowed(src);
    if width != w0 {
        let ax = axis_weights(w0 as usize, width as usize);
        let mut out = RgbImage::new(width, h0);
        let (src_raw, row_in) = (current.as_raw(), w0 as usize * 3);
        let row_out = width as usize * 3;
        let round = 1i32 << (ax.precision - 1);
        for (y, out_row) in out.chunks_mut(row_out).enumerate() {
            let in_row = &src_raw[y * row_in..(y + 1) * row_in];
            for x in 0..width as usize {
                let w = &ax.weights[x * ax.taps..x * ax.taps + ax.len[x]];
                let base = ax.start[x] * 3;
                let mut acc = [round; 3];
                for (k, &wk) in w.iter().enumerate() {
                    let p = &in_row[base + k * 3..base + k * 3 + 3];
                    acc[0] += p[0] as i32 * wk as i32;
                    acc[1] += p[1] as i32 * wk as i32;
                    acc[2] += p[2] as i32 * wk as i32;
                }
                for c in 0..3 {
                    out_row[x * 3 + c] = clamp_shift(acc[c], ax.precision);
                }
            }
        }
        current = std::borrow::Cow::Owned(out);
    }
    if height != h0 {
        let cur_w = current.width() as usize;
        let ax = axis_weights(h0 as usize, height as usize);
        let mut out = RgbImage::new(cur_w as u32, height);
        let src_raw = current.as_raw();
        let row = cur_w * 3;
        let round = 1i32 << (ax.precision - 1);
        let mut acc = vec![0i32; row];
        for (y, out_row) in out.chunks_mut(row).enumerate() {
            acc.fill(round);
            let w = &ax.weights[y * ax.taps..y * ax.taps + ax.len[y]];
            for (k, &wk) in w.iter().enumerate() {
                let in_row = &src_raw[(ax.start[y] + k) * row..(ax.start[y] + k + 1) * row];
                for (a, &p) in acc.iter_mut().zip(in_row) {
                    *a += p as i32 * wk as i32;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(&acc) {
                *o = clamp_shift(a, ax.precision);
            }
        }
        current = std::borrow::Cow::Owned(out);
    }
    current.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        assert_eq!(resize_bicubic_aa(&img, 7, 5), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([200, 13, 90]));
        for (w, h) in [(64, 96), (16, 16), (37, 200)] {
            let out = resize_bicubic_aa(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 13, 90]), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(1000, 512), (37, 64), (512, 512), (3, 256)] {
            let ax = axis_weights(i, o);
            for x in 0..o {
                let s: i32 = ax.weights[x * ax.taps..x * ax.taps + ax.len[x]].iter().map(|&w| w as i32).sum();
                assert!((s - (1 << ax.precision)).abs() <= ax.len[x] as i32, "{i}->{o} at {x}: {s}");
            }
        }
    }
}
