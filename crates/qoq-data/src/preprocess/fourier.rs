//! Fourier resampling exactly as `scipy.signal.resample(x, num)` computes it (ECG-JEPA's
//! 500 -> 250 Hz step): the real FFT of the record, its spectrum cut (or zero-padded) to
//! `num // 2 + 1` bins, with the bin at half the shorter length doubled when downsampling
//! an even length and halved when upsampling, the inverse real FFT of length `num`, and the
//! factor `num / len`. The record is treated as periodic (its ends ring if they do not
//! meet), as scipy's is.
//!
//! The FFT is an iterative radix-2 transform; other lengths go through Bluestein's chirp-z
//! (three power-of-two transforms), so any length costs O(n log n).

use std::f64::consts::PI;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct C {
    re: f64,
    im: f64,
}

impl C {
    fn mul(self, o: C) -> C {
        C { re: self.re * o.re - self.im * o.im, im: self.re * o.im + self.im * o.re }
    }
    fn conj(self) -> C {
        C { re: self.re, im: -self.im }
    }
    /// e^{i theta}.
    fn cis(theta: f64) -> C {
        C { re: theta.cos(), im: theta.sin() }
    }
}

/// In place, `a.len()` a power of two; `sign` -1 forward, +1 inverse (unscaled).
fn radix2(a: &mut [C], sign: f64) {
    let n = a.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            a.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let step = sign * 2.0 * PI / len as f64;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let w = C::cis(step * k as f64);
                let (u, v) = (a[start + k], a[start + k + len / 2].mul(w));
                a[start + k] = C { re: u.re + v.re, im: u.im + v.im };
                a[start + k + len / 2] = C { re: u.re - v.re, im: u.im - v.im };
            }
        }
        len <<= 1;
    }
}

/// The DFT of `x` (any length): `sign` -1 forward, +1 inverse (unscaled).
fn dft(x: &[C], sign: f64) -> Vec<C> {
    let n = x.len();
    if n.is_power_of_two() {
        let mut a = x.to_vec();
        radix2(&mut a, sign);
        return a;
    }
    // Bluestein: X_k = w_k sum_j (x_j w_j) conj(w_{k-j}), w_j = e^{sign i pi j^2 / n}.
    let chirp: Vec<C> = (0..n).map(|j| C::cis(sign * PI * ((j * j) % (2 * n)) as f64 / n as f64)).collect();
    let m = (2 * n - 1).next_power_of_two();
    let mut a = vec![C::default(); m];
    let mut b = vec![C::default(); m];
    for j in 0..n {
        a[j] = x[j].mul(chirp[j]);
        b[j] = chirp[j].conj();
        if j > 0 {
            b[m - j] = chirp[j].conj();
        }
    }
    radix2(&mut a, -1.0);
    radix2(&mut b, -1.0);
    for (p, q) in a.iter_mut().zip(&b) {
        *p = p.mul(*q);
    }
    radix2(&mut a, 1.0);
    (0..n).map(|k| C { re: a[k].re / m as f64, im: a[k].im / m as f64 }.mul(chirp[k])).collect()
}

/// `scipy.signal.resample(x, num)` for a real `x` (not empty), `num >= 1`.
pub fn resample(x: &[f64], num: usize) -> Vec<f64> {
    let nx = x.len();
    let spectrum = dft(&x.iter().map(|&re| C { re, im: 0.0 }).collect::<Vec<_>>(), -1.0);
    // The kept half-spectrum Y[0 .. num / 2], as scipy builds it from rfft(x).
    let n = num.min(nx);
    let nyq = n / 2 + 1;
    let mut half = vec![C::default(); num / 2 + 1];
    half[..nyq.min(num / 2 + 1)].copy_from_slice(&spectrum[..nyq.min(num / 2 + 1)]);
    if n.is_multiple_of(2) && num != nx {
        let factor = if num < nx { 2.0 } else { 0.5 };
        let b = &mut half[n / 2];
        *b = C { re: b.re * factor, im: b.im * factor };
    }
    // irfft(Y, num): a Hermitian spectrum (imaginary parts of DC and, for an even num,
    // the last bin dropped, as a real inverse transform does).
    let mut full = vec![C::default(); num];
    full[0] = C { re: half[0].re, im: 0.0 };
    for k in 1..half.len() {
        full[k] = half[k];
        if num - k != k {
            full[num - k] = half[k].conj();
        } else {
            full[k] = C { re: half[k].re, im: 0.0 };
        }
    }
    let scale = num as f64 / nx as f64 / num as f64;
    dft(&full, 1.0).into_iter().map(|c| c.re * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[C], sign: f64) -> Vec<C> {
        let n = x.len();
        (0..n)
            .map(|k| {
                x.iter().enumerate().fold(C::default(), |acc, (j, &v)| {
                    let p = v.mul(C::cis(sign * 2.0 * PI * ((j * k) % n) as f64 / n as f64));
                    C { re: acc.re + p.re, im: acc.im + p.im }
                })
            })
            .collect()
    }

    #[test]
    fn the_fft_equals_the_definition_at_every_length() {
        for n in [1, 2, 3, 8, 12, 25, 64, 100, 257] {
            let x: Vec<C> = (0..n).map(|i| C { re: (i as f64 * 0.7).sin(), im: (i as f64 * 0.3).cos() }).collect();
            for sign in [-1.0, 1.0] {
                let (fast, slow) = (dft(&x, sign), naive(&x, sign));
                let err = fast
                    .iter()
                    .zip(&slow)
                    .map(|(a, b)| (a.re - b.re).abs().max((a.im - b.im).abs()))
                    .fold(0.0, f64::max);
                assert!(err < 1e-9 * n as f64, "n {n}: {err}");
            }
        }
    }

    #[test]
    fn the_same_length_is_the_identity_and_a_band_limited_signal_is_exact() {
        let x: Vec<f64> = (0..30).map(|i| (i as f64 * 0.4).sin() + 0.1 * i as f64).collect();
        let y = resample(&x, 30);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-12));
        // 3 whole periods in 60 samples: any rate reproduces the sine.
        let sine = |t: f64| (2.0 * PI * 3.0 * t + 0.2).sin();
        let x: Vec<f64> = (0..60).map(|i| sine(i as f64 / 60.0)).collect();
        for num in [25, 30, 61, 150] {
            let y = resample(&x, num);
            let err = (0..num).map(|k| (y[k] - sine(k as f64 / num as f64)).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "num {num}: {err}");
        }
    }
}
