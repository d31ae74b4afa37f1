//! WFDB records (PhysioNet: PTB-XL, MIMIC-IV-ECG, ...): a `.hea` header and its signal
//! files in format 16 (16-bit little-endian) or 212 (two 12-bit samples in 3 bytes).
//! Physical value = (digital - baseline) / gain, with WFDB's defaults (gain 0 or absent
//! -> 200 per unit, baseline absent -> ADC zero, sampling frequency absent -> 250 Hz).
//! Checksums are not verified; multi-segment records, several samples per frame, skew
//! and other formats are errors that say how to convert the record.

use std::path::{Path, PathBuf};

use super::fields::Reason;
use crate::sample::Signal;

/// WFDB's default gain (ADC units per physical unit) when the header gives 0 or none.
const DEFAULT_GAIN: f64 = 200.0;
/// WFDB's default sampling frequency when the header gives none.
const DEFAULT_FREQUENCY: f64 = 250.0;

/// The header of the record `path` names, if it names one: `X.hea` itself, `X.dat` with
/// `X.hea` beside it, or a record name `X` (no such file) with `X.hea` beside it.
pub(super) fn header_path(path: &Path) -> Result<Option<PathBuf>, Reason> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if ext == "hea" {
        return Ok(Some(path.to_path_buf()));
    }
    if ext == "dat" {
        let header = path.with_extension("hea");
        if header.is_file() {
            return Ok(Some(header));
        }
        return Err(format!(
            "`{}` is a WFDB signal file; its header `{}` must lie beside it",
            path.display(),
            header.display()
        ));
    }
    if !path.exists() {
        let mut name = path.as_os_str().to_owned();
        name.push(".hea");
        let header = PathBuf::from(name);
        if header.is_file() {
            return Ok(Some(header));
        }
    }
    Ok(None)
}

/// One signal line of a header.
#[derive(Debug, Clone, PartialEq)]
struct SignalSpec {
    file: String,
    format: u32,
    byte_offset: u64,
    gain: f64,
    baseline: i64,
    description: String,
}

/// The record line and the signal lines.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    frequency: f64,
    samples: Option<usize>,
    signals: Vec<SignalSpec>,
}

/// The record whose header is `header`, at the header's sampling frequency.
pub(super) fn read_record(header: &Path) -> Result<Signal, Reason> {
    let at = |e: String| format!("`{}`: {e}", header.display());
    let text = std::fs::read(header).map_err(|e| at(e.to_string()))?;
    let h = parse_header(&String::from_utf8_lossy(&text)).map_err(at)?;
    let dir = header.parent().unwrap_or(Path::new(""));
    let leads = h.signals.len();
    let mut columns: Vec<Vec<i32>> = vec![Vec::new(); leads];
    // Signals sharing a file are interleaved frame by frame, in header order.
    let mut files: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, s) in h.signals.iter().enumerate() {
        match files.iter_mut().find(|(f, _)| *f == s.file) {
            Some((_, members)) => members.push(i),
            None => files.push((&s.file, vec![i])),
        }
    }
    for (file, members) in &files {
        let first = &h.signals[members[0]];
        if let Some(&other) = members.iter().find(|&&m| h.signals[m].format != first.format) {
            return Err(at(format!("signals 0 and {other} of `{file}` have different formats")));
        }
        let path = dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("`{}` (signal file of `{}`): {e}", path.display(), header.display()))?;
        let data = bytes.get(first.byte_offset as usize..).unwrap_or_default();
        let digital = decode(data, first.format).map_err(|e| format!("`{}`: {e}", path.display()))?;
        let frames = digital.len() / members.len();
        let wanted = h.samples.unwrap_or(frames);
        if frames < wanted {
            return Err(format!(
                "`{}` holds {frames} samples per signal, the header `{}` says {wanted}: truncated",
                path.display(),
                header.display()
            ));
        }
        for (k, &m) in members.iter().enumerate() {
            columns[m] = (0..wanted).map(|t| digital[t * members.len() + k]).collect();
        }
    }
    let samples = columns.iter().map(Vec::len).min().unwrap_or(0);
    if samples == 0 {
        return Err(at("the record holds no samples".into()));
    }
    let mut values = Vec::with_capacity(leads * samples);
    for (i, (spec, column)) in h.signals.iter().zip(&columns).enumerate() {
        let invalid = if spec.format == 16 { -32768 } else { -2048 };
        if let Some(t) = column[..samples].iter().position(|&d| d == invalid) {
            return Err(at(format!(
                "signal {i} ({}) sample {t} holds WFDB's invalid-sample marker {invalid}",
                spec.description
            )));
        }
        values.extend(column[..samples].iter().map(|&d| ((f64::from(d) - spec.baseline as f64) / spec.gain) as f32));
    }
    let count = |n: usize| u32::try_from(n).map_err(|_| at(format!("{n} is too large")));
    Ok(Signal { leads: count(leads)?, samples: count(samples)?, sampling_rate_hz: h.frequency as f32, values })
}

/// The digital samples of a signal file, interleaved as stored.
fn decode(data: &[u8], format: u32) -> Result<Vec<i32>, Reason> {
    Ok(match format {
        16 => data.chunks_exact(2).map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        212 => {
            let twelve = |v: u16| i32::from(((v << 4) as i16) >> 4);
            let mut out = Vec::with_capacity(data.len() / 3 * 2 + 1);
            for c in data.chunks(3) {
                match *c {
                    [a, b, d] => {
                        out.push(twelve(u16::from(a) | (u16::from(b & 0x0F) << 8)));
                        out.push(twelve(u16::from(d) | (u16::from(b & 0xF0) << 4)));
                    }
                    [a, b] => out.push(twelve(u16::from(a) | (u16::from(b & 0x0F) << 8))),
                    _ => {}
                }
            }
            out
        }
        other => return Err(format!("WFDB format {other} is not supported (formats 16 and 212 are)")),
    })
}

fn parse_header(text: &str) -> Result<Header, Reason> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let record = lines.next().ok_or("empty header")?;
    let fields: Vec<&str> = record.split_whitespace().collect();
    if fields[0].contains('/') {
        return Err("multi-segment WFDB records are not supported; read it with the wfdb package and save \
                    the signal as .npy: python -c \"import wfdb, numpy as np; \
                    np.save('X.npy', wfdb.rdrecord('X').p_signal.T.astype('float32'))\""
            .into());
    }
    let count: usize = fields
        .get(1)
        .and_then(|f| f.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("record line `{record}` has no signal count"))?;
    let frequency = match fields.get(2) {
        None => DEFAULT_FREQUENCY,
        Some(f) => {
            let number = f.split(['/', '(']).next().unwrap_or_default();
            match number.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => v,
                _ => return Err(format!("bad sampling frequency `{f}` in record line `{record}`")),
            }
        }
    };
    let samples = match fields.get(3) {
        None => None,
        Some(f) => match f.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(format!("bad number of samples `{f}` in record line `{record}`")),
        },
    };
    let signals = (0..count)
        .map(|i| {
            let line = lines
                .next()
                .ok_or_else(|| format!("the record line names {count} signals, the header describes {i}"))?;
            parse_signal(line).map_err(|e| format!("signal line {i} `{line}`: {e}"))
        })
        .collect::<Result<_, Reason>>()?;
    Ok(Header { frequency, samples, signals })
}

/// `file format[xN][:skew][+offset] [gain[(baseline)][/units] [resolution [zero [initial [checksum [block [description]]]]]]]`
fn parse_signal(line: &str) -> Result<SignalSpec, Reason> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (file, spec) = match fields[..] {
        [file, spec, ..] => (file.to_string(), spec),
        _ => return Err("no signal format".into()),
    };
    let digits = spec.find(|c: char| !c.is_ascii_digit()).unwrap_or(spec.len());
    let format: u32 = spec[..digits].parse().map_err(|_| format!("bad format `{spec}`"))?;
    let (mut byte_offset, mut rest) = (0u64, &spec[digits..]);
    while let Some(c) = rest.chars().next() {
        let body = &rest[c.len_utf8()..];
        let end = body.find(['x', ':', '+']).unwrap_or(body.len());
        let value: i64 = body[..end].parse().map_err(|_| format!("bad format `{spec}`"))?;
        match c {
            'x' if value > 1 => {
                return Err(format!("{value} samples per frame (multi-frequency records) are not supported"))
            }
            ':' if value != 0 => return Err(format!("signal skew {value} is not supported")),
            '+' => byte_offset = u64::try_from(value).map_err(|_| format!("bad byte offset in `{spec}`"))?,
            'x' | ':' => {}
            _ => return Err(format!("bad format `{spec}`")),
        }
        rest = &body[end..];
    }
    if format != 16 && format != 212 {
        return Err(format!(
            "WFDB format {format} is not supported (formats 16 and 212 are); convert the record to .npy: \
             python -c \"import wfdb, numpy as np; np.save('X.npy', wfdb.rdrecord('X').p_signal.T.astype('float32'))\""
        ));
    }
    let gain_spec = fields.get(2).copied().unwrap_or("");
    let gain_text = gain_spec.split(['(', '/']).next().unwrap_or_default();
    let gain = match gain_text {
        "" => DEFAULT_GAIN,
        g => match g.parse::<f64>() {
            Ok(0.0) => DEFAULT_GAIN,
            Ok(v) if v.is_finite() => v,
            _ => return Err(format!("bad gain `{gain_spec}`")),
        },
    };
    let int = |i: usize, what: &str| -> Result<Option<i64>, Reason> {
        fields.get(i).map(|f| f.parse::<i64>().map_err(|_| format!("bad {what} `{f}`"))).transpose()
    };
    let zero = int(4, "ADC zero")?.unwrap_or(0);
    let baseline = match gain_spec.split_once('(') {
        Some((_, b)) => {
            let b = b.split(')').next().unwrap_or_default();
            b.parse::<i64>().map_err(|_| format!("bad baseline in `{gain_spec}`"))?
        }
        None => zero,
    };
    Ok(SignalSpec { file, format, byte_offset, gain, baseline, description: fields.get(8..).unwrap_or(&[]).join(" ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format 212 bytes of `samples` (12-bit two's complement), packed in pairs.
    fn pack_212(samples: &[i32]) -> Vec<u8> {
        let mut out = Vec::new();
        for pair in samples.chunks(2) {
            let a = (pair[0] & 0xFFF) as u16;
            let b = pair.get(1).map_or(0, |&v| (v & 0xFFF) as u16);
            out.extend_from_slice(&[(a & 0xFF) as u8, ((a >> 8) as u8) | (((b >> 8) as u8) << 4), (b & 0xFF) as u8]);
        }
        out
    }

    #[test]
    fn header_fields_and_defaults() {
        let h = parse_header(
            "# comment\nrec 3 500/10(0) 1000 12:00:00\nrec.dat 16 1000(-5)/mV 16 0 -10 123 0 I\n\
             rec.dat 16+24 0/mV 12 7 0 0 0 lead II\nrec_b.dat 212\n",
        )
        .unwrap();
        assert_eq!((h.frequency, h.samples), (500.0, Some(1000)));
        assert_eq!((h.signals[0].gain, h.signals[0].baseline, h.signals[0].description.as_str()), (1000.0, -5, "I"));
        let s1 = &h.signals[1];
        assert_eq!((s1.gain, s1.baseline, s1.byte_offset, s1.description.as_str()), (200.0, 7, 24, "lead II"));
        assert_eq!((h.signals[2].format, h.signals[2].gain, h.signals[2].baseline), (212, 200.0, 0));
        let h = parse_header("rec 1\nrec.dat 16\n").unwrap();
        assert_eq!((h.frequency, h.samples), (250.0, None));
    }

    #[test]
    fn header_errors_name_the_problem() {
        assert!(parse_header("rec 2 500\nrec.dat 16\n").unwrap_err().contains("describes 1"));
        assert!(parse_header("rec 1 500\nrec.dat 80\n").unwrap_err().contains("WFDB format 80 is not supported"));
        assert!(parse_header("rec/2 1 500\n").unwrap_err().contains("multi-segment"));
        assert!(parse_header("rec 1 500\nrec.dat 16x2\n").unwrap_err().contains("samples per frame"));
        assert!(parse_header("rec 1 fast\nrec.dat 16\n").unwrap_err().contains("sampling frequency"));
        assert!(parse_header("rec\n").unwrap_err().contains("signal count"));
    }

    #[test]
    fn format_212_unpacks_signed_pairs() {
        let samples = [0, 1, -1, 2047, -2048, -300, 5];
        assert_eq!(decode(&pack_212(&samples), 212).unwrap()[..7], samples);
        assert_eq!(decode(&[0x34, 0x12, 0xff, 0xfe], 16).unwrap(), [0x1234, -257]);
        assert!(decode(&[0; 4], 80).unwrap_err().contains("format 80"));
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn format_16_multi_signal_record_is_deinterleaved_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        // 3 signals over 2 files: a.dat holds signals 0 and 1 interleaved (frame t:
        // s0[t], s1[t]), b.dat signal 2 after a 4-byte prefix.
        let s0 = [0i16, 100, -200, 32767];
        let s1 = [10i16, 20, 30, 40];
        let s2 = [-5i16, 5, 15, 25];
        let a: Vec<u8> = s0.iter().zip(&s1).flat_map(|(x, y)| [x.to_le_bytes(), y.to_le_bytes()]).flatten().collect();
        let mut b = vec![9u8; 4];
        b.extend(s2.iter().flat_map(|v| v.to_le_bytes()));
        write(dir.path(), "a.dat", &a);
        write(dir.path(), "b.dat", &b);
        write(
            dir.path(),
            "r.hea",
            b"r 3 500 4\na.dat 16 200(0)/mV 16 0 0 0 0 I\na.dat 16 100(10)/mV 16 0 0 0 0 II\nb.dat 16+4 0 16 5 0 0 0 V1\n",
        );
        let sig = read_record(&dir.path().join("r.hea")).unwrap();
        assert_eq!((sig.leads, sig.samples, sig.sampling_rate_hz), (3, 4, 500.0));
        let expected: Vec<f32> = s0
            .iter()
            .map(|&d| f32::from(d) / 200.0)
            .chain(s1.iter().map(|&d| (f32::from(d) - 10.0) / 100.0))
            .chain(s2.iter().map(|&d| (f32::from(d) - 5.0) / 200.0)) // gain 0 -> 200, baseline = ADC zero
            .collect();
        assert_eq!(sig.values, expected);
    }

    #[test]
    fn format_212_record_with_an_odd_signal_count() {
        let dir = tempfile::tempdir().unwrap();
        // 3 signals x 3 frames = 9 samples: pairs are packed across signal boundaries.
        let digital = [[1, -1, 2047], [-2047, 0, 300], [-300, 7, -8]];
        let flat: Vec<i32> = digital.iter().flatten().copied().collect();
        write(dir.path(), "e.dat", &pack_212(&flat));
        write(dir.path(), "e.hea", b"e 3 250 3\ne.dat 212 1000 12 0\ne.dat 212 1000 12 0\ne.dat 212 2(1)/mV 12 0\n");
        let sig = read_record(&dir.path().join("e.hea")).unwrap();
        assert_eq!((sig.leads, sig.samples), (3, 3));
        let lead = |l: usize, scale: f32, base: f32| -> Vec<f32> {
            digital.iter().map(|f| (f[l] as f32 - base) / scale).collect()
        };
        assert_eq!(sig.values, [lead(0, 1000.0, 0.0), lead(1, 1000.0, 0.0), lead(2, 2.0, 1.0)].concat());
    }

    #[test]
    fn record_paths_and_data_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "x.dat", &[1, 0, 2, 0, 3, 0]);
        write(d, "x.hea", b"x 1 360\nx.dat 16\n");
        for name in ["x.hea", "x.dat", "x"] {
            let header = header_path(&d.join(name)).unwrap().unwrap();
            assert_eq!(header, d.join("x.hea"), "{name}");
        }
        // No number of samples: all of the file.
        let sig = read_record(&d.join("x.hea")).unwrap();
        assert_eq!((sig.samples, sig.sampling_rate_hz, sig.values.clone()), (3, 360.0, vec![0.005, 0.01, 0.015]));
        assert_eq!(header_path(&d.join("y.npy")).unwrap(), None);
        write(d, "lone.dat", &[0; 4]);
        assert!(header_path(&d.join("lone.dat")).unwrap_err().contains("lone.hea"));

        write(d, "t.hea", b"t 1 500 10\nx.dat 16\n");
        let err = read_record(&d.join("t.hea")).unwrap_err();
        assert!(err.contains("3 samples") && err.contains("says 10") && err.contains("truncated"), "{err}");
        write(d, "m.hea", b"m 1 500\nmissing.dat 16\n");
        assert!(read_record(&d.join("m.hea")).unwrap_err().contains("missing.dat"));
        write(d, "inv.dat", &[0, 0, 0, 0x80]);
        write(d, "inv.hea", b"inv 1 500\ninv.dat 16 200 16 0 0 0 0 V3\n");
        let err = read_record(&d.join("inv.hea")).unwrap_err();
        assert!(err.contains("signal 0 (V3) sample 1") && err.contains("-32768"), "{err}");
        write(d, "f.hea", b"f 1 500\nx.dat 310\n");
        let err = read_record(&d.join("f.hea")).unwrap_err();
        assert!(err.contains("f.hea") && err.contains("format 310"), "{err}");
    }
}
