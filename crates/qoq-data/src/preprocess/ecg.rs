//! ECG preprocessing for the ECG-JEPA encoder QoQ-Med uses: 8 leads (I, II, V1-V6),
//! 2,500 samples at 250 Hz (10 s), each lead z-scored over time with the unbiased
//! standard deviation (`torch.std`), no clipping.
//!
//! The steps, in order:
//!
//! 1. **Leads.** A 12-lead record (I, II, III, aVR, aVL, aVF, V1-V6) keeps
//!    [`ECG_LEADS_OF_12`]; an 8-lead record is taken as already I, II, V1-V6; any other
//!    lead count is an error.
//! 2. **Resampling** to 250 Hz when the rate differs (an exact copy at 250 Hz): the
//!    whole record to `round(n * 250 / rate)` samples by Fourier resampling, exactly as
//!    `scipy.signal.resample` (ECG-JEPA's 500 -> 250 Hz step) computes it
//!    ([`super::fourier`]; checked against scipy to 1e-9 in `tests/preprocess_parity.rs`).
//!    Output sample `k` lies at `k / 250` s. The method treats the record as periodic, so a
//!    record whose ends do not meet rings near them, as it does in ECG-JEPA's data.
//! 3. **Duration.** Records shorter than 5 s are an error ("too short").
//! 4. **Window** of 2,500 samples: a longer record is centre-cropped (the first dropped
//!    sample count is `(len - 2500) / 2`, rounded down).
//! 5. **Z-score** each lead over its kept samples (mean, unbiased std); a constant lead
//!    (std 0, or a spread below 1e-9 of its magnitude, i.e. constant up to f64 rounding)
//!    becomes zeros, as ECG-JEPA's std 0 -> 1 does.
//! 6. **Padding.** A record of 5 to 10 s is zero-padded at the end after z-scoring, so
//!    the padding equals each lead's mean.
//!
//! Computed in f64, returned as f32.
//!
//! ```
//! use qoq_data::preprocess::{preprocess_ecg, ECG_LEADS, ECG_SAMPLES};
//! use qoq_data::Signal;
//! let values = (0..12 * 5000).map(|i| ((i % 5000) as f32 * 0.01).sin()).collect();
//! let signal = Signal { leads: 12, samples: 5000, sampling_rate_hz: 500.0, values };
//! let x = preprocess_ecg(&signal).unwrap();
//! assert_eq!(x.len(), ECG_LEADS * ECG_SAMPLES);
//! ```

use crate::sample::Signal;

/// Leads the encoder takes.
pub const ECG_LEADS: usize = 8;
/// Samples per lead the encoder takes (10 s at [`ECG_RATE_HZ`]).
pub const ECG_SAMPLES: usize = 2500;
/// Sampling rate the encoder takes.
pub const ECG_RATE_HZ: f32 = 250.0;
/// 12-lead indices kept: I, II, V1..V6.
pub const ECG_LEADS_OF_12: [usize; 8] = [0, 1, 6, 7, 8, 9, 10, 11];
/// Shortest record accepted, in samples at [`ECG_RATE_HZ`] (5 s).
pub const ECG_MIN_SAMPLES: usize = ECG_SAMPLES / 2;

/// Names of the 12 standard leads, for messages.
const LEAD_NAMES_12: [&str; 12] = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"];

/// The encoder input of `signal`: [`ECG_LEADS`] x [`ECG_SAMPLES`] values, lead-major
/// (`out[lead * 2500 + t]`), following the policy in the module documentation.
///
/// Errors name what is wrong: a lead count other than 8 or 12, a values length that
/// disagrees with `leads * samples`, a non-positive or non-finite rate, a non-finite value
/// (with its lead and sample), a record shorter than 5 s.
pub fn preprocess_ecg(signal: &Signal) -> Result<Vec<f32>, String> {
    let (leads, samples) = (signal.leads as usize, signal.samples as usize);
    let rate = f64::from(signal.sampling_rate_hz);
    let (kept, names): (Vec<usize>, Vec<String>) = match leads {
        12 => (ECG_LEADS_OF_12.to_vec(), LEAD_NAMES_12.iter().map(|n| (*n).to_string()).collect()),
        8 => {
            let names = ECG_LEADS_OF_12.iter().map(|&i| LEAD_NAMES_12[i].to_string()).collect();
            ((0..8).collect(), names)
        }
        n => {
            return Err(format!(
                "ECG has {n} leads; 12 (I, II, III, aVR, aVL, aVF, V1-V6) or 8 (I, II, V1-V6) are accepted"
            ))
        }
    };
    if Some(signal.values.len()) != leads.checked_mul(samples) {
        return Err(format!(
            "ECG holds {} values, but {leads} leads x {samples} samples need {}",
            signal.values.len(),
            leads.saturating_mul(samples)
        ));
    }
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("ECG sampling rate {rate} Hz must be a positive number"));
    }
    if let Some(i) = signal.values.iter().position(|v| !v.is_finite()) {
        let (lead, t) = (i / samples, i % samples);
        return Err(format!(
            "ECG lead {lead} ({}) sample {t} is {}, not a finite number",
            names[lead], signal.values[i]
        ));
    }
    let seconds = samples as f64 / rate;
    // The loader's check (`validate::check_ecg_for_encoder`) uses the same bound.
    let least = ECG_MIN_SAMPLES as f64 / f64::from(ECG_RATE_HZ);
    if seconds < least {
        return Err(format!(
            "ECG is too short: {samples} samples at {rate} Hz are {seconds:.3} s; at least {least} s are needed"
        ));
    }

    // Only the output samples the 10 s window keeps are computed.
    let identity = rate == f64::from(ECG_RATE_HZ);
    let len = if identity { samples as f64 } else { (samples as f64 * f64::from(ECG_RATE_HZ) / rate).round() };
    if len > f64::from(u32::MAX) {
        return Err(format!("ECG of {samples} samples at {rate} Hz lasts {seconds} s: implausibly long"));
    }
    let len = len as usize;
    if len < ECG_MIN_SAMPLES {
        // Unreachable for >= 5 s records; kept so the window below never underflows.
        return Err(format!("ECG is too short after resampling: {len} samples at 250 Hz, at least 1250 needed"));
    }
    let start = len.saturating_sub(ECG_SAMPLES) / 2;
    let count = len.min(ECG_SAMPLES);
    let lead = |l: usize| &signal.values[l * samples..(l + 1) * samples];
    let windows: Vec<Vec<f64>> = if identity {
        kept.iter().map(|&l| lead(l)[start..start + count].iter().map(|&v| f64::from(v)).collect()).collect()
    } else {
        let selected: Vec<Vec<f64>> = kept.iter().map(|&l| lead(l).iter().map(|&v| f64::from(v)).collect()).collect();
        resample(&selected, rate, f64::from(ECG_RATE_HZ), start..start + count)
    };

    let mut out = vec![0f32; ECG_LEADS * ECG_SAMPLES];
    for (l, window) in windows.iter().enumerate() {
        let dst = &mut out[l * ECG_SAMPLES..l * ECG_SAMPLES + window.len()];
        for (o, z) in dst.iter_mut().zip(z_score(window)) {
            *o = z as f32;
        }
    }
    Ok(out)
}

/// `x` minus its mean, over its unbiased standard deviation; a constant series (up to
/// f64 rounding) gives zeros. `x` holds at least 2 values.
fn z_score(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let (lo, hi) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if hi - lo <= 1e-9 * lo.abs().max(hi.abs()) {
        return vec![0.0; x.len()];
    }
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    x.iter().map(|v| (v - mean) / std).collect()
}

/// Output samples `range` (at `k / to` s) of every series of `leads` (all the same
/// length, sampled at `from` Hz), resampled to `round(n * to / from)` samples as
/// `scipy.signal.resample` does ([`super::fourier::resample`]).
fn resample(leads: &[Vec<f64>], from: f64, to: f64, range: std::ops::Range<usize>) -> Vec<Vec<f64>> {
    leads
        .iter()
        .map(|x| {
            let num = (x.len() as f64 * to / from).round() as usize;
            super::fourier::resample(x, num)[range.clone()].to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn signal(leads: usize, samples: usize, rate: f32, mut f: impl FnMut(usize, usize) -> f32) -> Signal {
        let values = (0..leads).flat_map(|l| (0..samples).map(move |t| (l, t))).map(|(l, t)| f(l, t)).collect();
        Signal { leads: leads as u32, samples: samples as u32, sampling_rate_hz: rate, values }
    }

    fn lead(out: &[f32], l: usize) -> &[f32] {
        &out[l * ECG_SAMPLES..(l + 1) * ECG_SAMPLES]
    }

    /// Mean and unbiased std in f64.
    fn stats(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn twelve_leads_keep_i_ii_and_the_chest_leads() {
        // Lead l is a ramp scaled by (l + 1): after z-scoring every lead is the same ramp,
        // so mark the leads by their sign instead: lead l is negated when l is odd.
        let s = signal(12, 2500, 250.0, |l, t| if l % 2 == 1 { -(t as f32) } else { t as f32 } * (l + 1) as f32);
        let out = preprocess_ecg(&s).unwrap();
        for (k, &l) in ECG_LEADS_OF_12.iter().enumerate() {
            let increasing = lead(&out, k)[1] > lead(&out, k)[0];
            assert_eq!(increasing, l % 2 == 0, "output lead {k} is input lead {l}");
        }
        // An 8-lead record is taken as is.
        let eight = signal(8, 2500, 250.0, |l, t| if l == 3 { -(t as f32) } else { t as f32 });
        let out = preprocess_ecg(&eight).unwrap();
        assert!(lead(&out, 3)[1] < lead(&out, 3)[0] && lead(&out, 4)[1] > lead(&out, 4)[0]);
    }

    #[test]
    fn identity_at_250_hz() {
        let s = signal(8, 2500, 250.0, |l, t| ((t * 7 + l * 13) % 31) as f32 - 15.0);
        let out = preprocess_ecg(&s).unwrap();
        for l in 0..8 {
            let x: Vec<f64> = s.values[l * 2500..(l + 1) * 2500].iter().map(|&v| f64::from(v)).collect();
            let expected: Vec<f32> = z_score(&x).iter().map(|&z| z as f32).collect();
            assert_eq!(lead(&out, l), expected.as_slice());
        }
    }

    #[test]
    fn resamples_500_to_250_close_to_the_analytic_sine() {
        // 5 Hz sine, 10 s at 500 Hz; 50 whole periods, so scipy.signal.resample (FFT) is
        // exact here and the analytic sine is also its output.
        let phase = 0.3;
        let sine = |t: f64| (2.0 * std::f64::consts::PI * 5.0 * t + phase).sin();
        let x = vec![(0..5000).map(|i| sine(i as f64 / 500.0)).collect::<Vec<_>>()];
        let y = resample(&x, 500.0, 250.0, 0..2500);
        assert_eq!(y[0].len(), 2500);
        let err: Vec<f64> = y[0].iter().enumerate().map(|(k, v)| (v - sine(k as f64 / 250.0)).abs()).collect();
        let interior = err[125..2375].iter().cloned().fold(0.0, f64::max);
        let all = err.iter().cloned().fold(0.0, f64::max);
        let edge = err[..1250].iter().rposition(|&e| e >= 1e-7).map_or(0, |i| i + 1);
        println!(
            "max |Fourier resample - analytic| = {interior:.2e} inside, {all:.2e} overall; < 1e-7 from sample {edge} on"
        );
        assert!(interior < 1e-8, "interior error {interior}");
        assert!(all < 1e-4, "edge error {all}");
        // Upsampling 100 -> 250 Hz is as accurate.
        let x = vec![(0..1000).map(|i| sine(i as f64 / 100.0)).collect::<Vec<_>>()];
        let y = resample(&x, 100.0, 250.0, 0..2500);
        assert_eq!(y[0].len(), 2500);
        let interior = (125..2375).map(|k| (y[0][k] - sine(k as f64 / 250.0)).abs()).fold(0.0, f64::max);
        println!("upsampling 100 -> 250 Hz: {interior:.2e} inside");
        assert!(interior < 1e-6, "upsampling interior error {interior}");
        // Through preprocess_ecg: the z-scored sine (std 1/sqrt(2) for whole periods).
        let s = signal(8, 5000, 500.0, |_, t| sine(t as f64 / 500.0) as f32);
        let out = preprocess_ecg(&s).unwrap();
        let (mean, std) = stats(lead(&out, 0));
        assert!(mean.abs() < 1e-4 && (std - 1.0).abs() < 1e-4, "{mean} {std}");
    }

    #[test]
    fn z_score_uses_the_unbiased_std() {
        // [1, 2, 3, 4]: mean 2.5, unbiased variance 5/3.
        let z = z_score(&[1.0, 2.0, 3.0, 4.0]);
        let s = (5.0f64 / 3.0).sqrt();
        assert_eq!(z, vec![-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
        let s = signal(8, 3000, 250.0, |l, t| ((t * (l + 3)) % 17) as f32 * 0.2 + l as f32);
        let out = preprocess_ecg(&s).unwrap();
        for l in 0..8 {
            let (mean, std) = stats(lead(&out, l));
            assert!(mean.abs() < 1e-6 && (std - 1.0).abs() < 1e-6, "lead {l}: {mean} {std}");
        }
    }

    #[test]
    fn constant_lead_becomes_zeros() {
        let s = signal(8, 5000, 500.0, |l, t| if l == 2 { 0.1 } else { (t as f32 * 0.05).sin() });
        let out = preprocess_ecg(&s).unwrap();
        assert!(lead(&out, 2).iter().all(|&v| v == 0.0));
        assert!(lead(&out, 1).iter().any(|&v| v != 0.0));
    }

    #[test]
    fn centre_crop_keeps_the_middle() {
        // 3000 samples at 250 Hz: 250 dropped at each end; t itself is the marker.
        let s = signal(8, 3000, 250.0, |_, t| t as f32);
        let out = preprocess_ecg(&s).unwrap();
        let kept: Vec<f64> = (250..2750).map(|t| t as f64).collect();
        let expected: Vec<f32> = z_score(&kept).iter().map(|&z| z as f32).collect();
        assert_eq!(lead(&out, 0), expected.as_slice());
        // An odd excess drops the extra sample at the end.
        let s = signal(8, 2503, 250.0, |_, t| t as f32);
        let out = preprocess_ecg(&s).unwrap();
        let kept: Vec<f64> = (1..2501).map(|t| t as f64).collect();
        assert_eq!(lead(&out, 7)[0], z_score(&kept)[0] as f32);
    }

    #[test]
    fn resampled_long_records_are_cropped_after_resampling() {
        // 30 s at 500 Hz -> 7500 samples at 250 Hz, of which 2500..5000 are kept; only
        // those are computed, and they equal the same samples of the whole resampled record.
        let s = signal(8, 15000, 500.0, |l, t| ((t as f32) * 0.013 + l as f32).sin() + (t % 97) as f32 * 0.01);
        let out = preprocess_ecg(&s).unwrap();
        let x: Vec<f64> = s.values[..15000].iter().map(|&v| f64::from(v)).collect();
        let full = resample(&[x], 500.0, 250.0, 0..7500);
        let expected: Vec<f32> = z_score(&full[0][2500..5000]).iter().map(|&z| z as f32).collect();
        assert_eq!(lead(&out, 0), expected.as_slice());
    }

    #[test]
    fn short_records_are_z_scored_then_zero_padded() {
        let s = signal(8, 2000, 250.0, |l, t| (t % 10) as f32 + l as f32);
        let out = preprocess_ecg(&s).unwrap();
        let x: Vec<f64> = (0..2000).map(|t| (t % 10) as f64 + 3.0).collect();
        let expected: Vec<f32> = z_score(&x).iter().map(|&z| z as f32).collect();
        assert_eq!(&lead(&out, 3)[..2000], expected.as_slice());
        assert!(lead(&out, 3)[2000..].iter().all(|&v| v == 0.0));
        // Exactly 5 s is accepted.
        assert!(preprocess_ecg(&signal(8, 1250, 250.0, |_, t| t as f32)).is_ok());
    }

    #[test]
    fn bad_signals_are_errors_that_say_why() {
        let err = preprocess_ecg(&signal(8, 1249, 250.0, |_, t| t as f32)).unwrap_err();
        assert!(err.contains("too short") && err.contains("4.996 s"), "{err}");
        let err = preprocess_ecg(&signal(12, 2400, 500.0, |_, t| t as f32)).unwrap_err();
        assert!(err.contains("too short"), "{err}");
        let mut s = signal(12, 2500, 250.0, |_, t| t as f32);
        s.values[7 * 2500 + 42] = f32::NAN;
        let err = preprocess_ecg(&s).unwrap_err();
        assert!(err.contains("lead 7 (V2) sample 42") && err.contains("NaN"), "{err}");
        let err = preprocess_ecg(&signal(3, 2500, 250.0, |_, t| t as f32)).unwrap_err();
        assert!(err.contains("3 leads") && err.contains("12") && err.contains("8"), "{err}");
        let err = preprocess_ecg(&signal(1, 2500, 250.0, |_, t| t as f32)).unwrap_err();
        assert!(err.contains("1 leads"), "{err}");
        let mut s = signal(8, 2500, 250.0, |_, t| t as f32);
        s.values.pop();
        assert!(preprocess_ecg(&s).unwrap_err().contains("19999 values"));
        let err = preprocess_ecg(&signal(8, 1, 1e-30, |_, _| 1.0)).unwrap_err();
        assert!(err.contains("implausibly long"), "{err}");
        for rate in [0.0, -250.0, f32::NAN, f32::INFINITY] {
            let s = signal(8, 2500, rate, |_, t| t as f32);
            assert!(preprocess_ecg(&s).unwrap_err().contains("sampling rate"), "{rate}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_finite_record_of_5_s_or_more_gives_finite_values(
            twelve in any::<bool>(),
            rate in prop::sample::select(vec![100.0f32, 125.0, 250.0, 257.0, 360.0, 500.0, 1000.0]),
            seconds in 5.0f64..14.0,
            scale_exp in -30i32..30,
            seed in any::<u64>(),
        ) {
            let leads = if twelve { 12 } else { 8 };
            let samples = (seconds * f64::from(rate)).ceil() as usize;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let scale = 10f32.powi(scale_exp);
            let s = signal(leads, samples, rate, |l, _| match l % 4 {
                0 => 1.0,                                                  // constant
                1 => rng_value(&mut rng) * scale,                          // noise
                2 => if rng.gen_bool(0.001) { f32::MAX } else { 0.0 },     // rare huge spikes
                _ => rng_value(&mut rng) * f32::MAX,                       // full range
            });
            let out = preprocess_ecg(&s).unwrap();
            prop_assert_eq!(out.len(), 20_000);
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    fn rng_value(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
        rng.gen_range(-1.0f32..1.0)
    }
}
