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
    let (w0, h0, w1, h1) = (w0 as usize, h0 as usize, width as usize, height as usize);
    let mut pixels = std::borrow::Cow::Borrowed(src.as_raw().as_slice());
    if w1 != w0 {
        // The horizontal pass runs as a vertical pass over the transposed image: rows
        // become contiguous and the taps' multiply-adds vectorise. Integer arithmetic, so
        // the result is the same as a direct horizontal pass.
        let transposed = transpose_rgb(&pixels, w0, h0);
        let resized = vertical_pass(&transposed, h0 * 3, &axis_weights(w0, w1));
        pixels = std::borrow::Cow::Owned(transpose_rgb(&resized, h0, w1));
    }
    if h1 != h0 {
        pixels = std::borrow::Cow::Owned(vertical_pass(&pixels, w1 * 3, &axis_weights(h0, h1)));
    }
    RgbImage::from_raw(width, height, pixels.into_owned()).expect("buffer sized for width x height")
}

/// One resampling pass along rows: output row y = clamp((round + sum_k w_k * row(start_y + k)) >> p).
/// Integer arithmetic: the AVX2 build of the same code gives the same bytes, faster.
fn vertical_pass(src: &[u8], row: usize, ax: &AxisWeights) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { vertical_pass_avx2(src, row, ax) };
        }
    }
    vertical_pass_generic(src, row, ax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_pass_avx2(src: &[u8], row: usize, ax: &AxisWeights) -> Vec<u8> {
    vertical_pass_generic(src, row, ax)
}

#[inline(always)]
fn vertical_pass_generic(src: &[u8], row: usize, ax: &AxisWeights) -> Vec<u8> {
    let out_rows = ax.start.len();
    let mut out = vec![0u8; out_rows * row];
    let round = 1i32 << (ax.precision - 1);
    let mut acc = vec![0i32; row];
    for (y, out_row) in out.chunks_mut(row).enumerate() {
        acc.fill(round);
        let w = &ax.weights[y * ax.taps..y * ax.taps + ax.len[y]];
        for (k, &wk) in w.iter().enumerate() {
            let at = (ax.start[y] + k) * row;
            let wk = wk as i32;
            for (a, &p) in acc.iter_mut().zip(&src[at..at + row]) {
                *a += p as i32 * wk;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clamp_shift(a, ax.precision);
        }
    }
    out
}

/// (h, w, 3) -> (w, h, 3).
fn transpose_rgb(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h * 3];
    const BLOCK: usize = 32;
    for y0 in (0..h).step_by(BLOCK) {
        for x0 in (0..w).step_by(BLOCK) {
            for y in y0..(y0 + BLOCK).min(h) {
                for x in x0..(x0 + BLOCK).min(w) {
                    let (s, d) = ((y * w + x) * 3, (x * h + y) * 3);
                    out[d..d + 3].copy_from_slice(&src[s..s + 3]);
                }
            }
        }
    }
    out
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
    fn transposed_horizontal_pass_equals_the_direct_one() {
        let img =
            RgbImage::from_fn(53, 9, |x, y| image::Rgb([(x * 37 + y * 11) as u8, (x * x) as u8, (255 - x * 3) as u8]));
        let ax = axis_weights(53, 20);
        let out = resize_bicubic_aa(&img, 20, 9);
        for y in 0..9u32 {
            for x in 0..20usize {
                for c in 0..3 {
                    let mut acc = 1i32 << (ax.precision - 1);
                    for k in 0..ax.len[x] {
                        acc +=
                            img.get_pixel((ax.start[x] + k) as u32, y).0[c] as i32 * ax.weights[x * ax.taps + k] as i32;
                    }
                    assert_eq!(out.get_pixel(x as u32, y).0[c], clamp_shift(acc, ax.precision), "({x}, {y}, {c})");
                }
            }
        }
    }

    #[test]
    fn simd_dispatch_matches_the_portable_pass() {
        let (w, h) = (97usize, 61usize);
        let src: Vec<u8> = (0..w * h * 3).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
        for out in [20, 61, 150] {
            let ax = axis_weights(h, out);
            assert_eq!(vertical_pass(&src, w * 3, &ax), vertical_pass_generic(&src, w * 3, &ax), "{h}->{out}");
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
