//! TensorBoard event files, written directly (the `tensorboard-rs` crate is unmaintained).
//!
//! A file is a sequence of records `[u64 len LE][masked crc32c of len][payload][masked crc32c
//! of payload]`, each payload a hand-encoded `Event` protobuf. Only what the trainer logs is
//! supported: scalars (`simple_value`) and RGB images (PNG-encoded).
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use qoq_train::tensorboard::EventWriter;
//! let mut events = EventWriter::create(std::path::Path::new("runs/exp1"))?;
//! events.scalar("loss", 1, 0.25)?;
//! events.scalars(1, &[("reward/mean".to_string(), 0.5), ("lr".to_string(), 1e-6)])?;
//! events.flush()?;
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CRC32C_TABLE: [u32; 256] = crc32c_table();

/// Table for the Castagnoli polynomial (reflected 0x82F63B78), built at compile time.
const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

fn crc32c(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| CRC32C_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8))
}

/// TFRecord masks its CRCs so that a CRC of data that itself contains CRCs stays well mixed.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

/// An int32/int64 field; negative values become 10-byte two's complement, as protobuf wants.
fn put_int(out: &mut Vec<u8>, field: u32, value: i64) {
    put_key(out, field, VARINT);
    put_varint(out, value as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Wall time for events and file names; a clock before 1970 reads as 0 rather than failing.
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Event { wall_time = 1, step = 2, file_version = 3 | summary = 5 }.
fn encode_event(step: i64, file_version: Option<&str>, summary: Option<&[u8]>) -> Vec<u8> {
    let wall_time = since_epoch().as_secs_f64();
    let mut event = Vec::with_capacity(32 + summary.map_or(0, <[u8]>::len));
    put_key(&mut event, 1, FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_int(&mut event, 2, step);
    if let Some(version) = file_version {
        put_bytes(&mut event, 3, version.as_bytes());
    }
    if let Some(summary) = summary {
        put_bytes(&mut event, 5, summary);
    }
    event
}

/// Appends one Summary.Value { tag = 1, simple_value = 2 } as Summary field 1.
fn put_scalar_value(summary: &mut Vec<u8>, tag: &str, value: f64) {
    let mut value_msg = Vec::with_capacity(tag.len() + 8);
    put_bytes(&mut value_msg, 1, tag.as_bytes());
    put_key(&mut value_msg, 2, FIXED32);
    value_msg.extend_from_slice(&(value as f32).to_le_bytes());
    put_bytes(summary, 1, &value_msg);
}

/// Writes one run's events to a new `events.out.tfevents.*` file; flushed on drop.
pub struct EventWriter {
    writer: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file
    /// `events.out.tfevents.{unix_secs}.{hostname}.{pid}.{n}` in it (n chosen so an existing
    /// file is never overwritten or appended to); writes the file_version record.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let secs = since_epoch().as_secs();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '\\'], "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        let pid = std::process::id();
        for n in 0..10_000u32 {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut writer = Self { writer: BufWriter::new(file), path };
                    writer.write_record(&encode_event(0, Some("brain.Event:2"), None))?;
                    writer.flush()?;
                    return Ok(writer);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(ErrorKind::AlreadyExists, format!("{}: no free event file name", dir.display())))
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar (stored as f32, as TensorBoard does; NaN and infinities pass through).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> io::Result<()> {
        self.scalars(step, &[(tag.to_string(), value)])
    }

    /// Several scalars of one step in one Event.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> io::Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            put_scalar_value(&mut summary, tag, *value);
        }
        self.write_record(&encode_event(step, None, Some(&summary)))
    }

    /// Logs an RGB image, PNG-encoded, as Summary.Value.image.
    pub fn image(&mut self, tag: &str, step: i64, image: &image::RgbImage) -> io::Result<()> {
        let mut png = io::Cursor::new(Vec::new());
        let encoded = image.write_to(&mut png, image::ImageFormat::Png);
        encoded.map_err(|e| io::Error::other(format!("PNG encoding of image {tag:?}: {e}")))?;
        let png = png.into_inner();
        let mut image_msg = Vec::with_capacity(png.len() + 16);
        put_int(&mut image_msg, 1, image.height().into());
        put_int(&mut image_msg, 2, image.width().into());
        put_int(&mut image_msg, 3, 3); // colorspace: RGB
        put_bytes(&mut image_msg, 4, &png);
        let mut value_msg = Vec::with_capacity(image_msg.len() + tag.len() + 8);
        put_bytes(&mut value_msg, 1, tag.as_bytes());
        put_bytes(&mut value_msg, 4, &image_msg);
        let mut summary = Vec::with_capacity(value_msg.len() + 8);
        put_bytes(&mut summary, 1, &value_msg);
        self.write_record(&encode_event(step, None, Some(&summary)))
    }

    /// Pushes buffered records to the file, so TensorBoard sees them while training runs.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    fn write_record(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        self.writer.write_all(&len)?;
        self.writer.write_all(&masked_crc32c(&len).to_le_bytes())?;
        self.writer.write_all(payload)?;
        self.writer.write_all(&masked_crc32c(payload).to_le_bytes())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.writer.flush(); // nowhere to report it; callers wanting errors call flush()
    }
}

/// One decoded event of a file written by EventWriter (for tests and tools).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadEvent {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// (tag, simple_value) of each scalar value.
    pub scalars: Vec<(String, f32)>,
    /// (tag, width, height) of each image value.
    pub images: Vec<(String, u32, u32)>,
}

/// Reads every record, checking both CRCs of each; a bad CRC or a truncated record is an
/// io::Error of kind InvalidData naming the file and the byte offset of the record.
pub fn read_events(path: &Path) -> io::Result<Vec<ReadEvent>> {
    let data = std::fs::read(path)?;
    let (mut events, mut offset) = (Vec::new(), 0);
    while offset < data.len() {
        let (event, size) = next_record(&data[offset..]).map_err(|what| {
            let message = format!("{}: record at byte {offset}: {what}", path.display());
            io::Error::new(ErrorKind::InvalidData, message)
        })?;
        events.push(event);
        offset += size;
    }
    Ok(events)
}

/// Decodes the record at the start of `rest`; returns it with its size in bytes.
fn next_record(rest: &[u8]) -> Result<(ReadEvent, usize), &'static str> {
    let le_u32 = |b: &[u8]| b.try_into().map(u32::from_le_bytes).unwrap_or(0);
    let header = rest.get(..12).ok_or("truncated header")?;
    if masked_crc32c(&header[..8]) != le_u32(&header[8..]) {
        return Err("length CRC mismatch");
    }
    let len = header[..8].try_into().map_or(u64::MAX, u64::from_le_bytes);
    let len = usize::try_from(len).ok().filter(|&len| len <= rest.len() - 12);
    let (payload, crc) = rest[12..].split_at(len.ok_or("truncated payload")?);
    let crc = crc.get(..4).ok_or("truncated payload")?;
    if masked_crc32c(payload) != le_u32(crc) {
        return Err("payload CRC mismatch");
    }
    let event = decode_event(payload).ok_or("malformed Event protobuf")?;
    Ok((event, 12 + payload.len() + 4))
}

/// A protobuf field's value: a varint, or the raw bytes of a fixed-size or length-delimited one.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Splits a message into (field number, value); `None` on malformed input.
fn fields(mut msg: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(msg: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = msg.split_first()?;
            *msg = rest;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        let len = match (key & 7) as u32 {
            VARINT => {
                out.push((key >> 3, Field::Varint(varint(&mut msg)?)));
                continue;
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => usize::try_from(varint(&mut msg)?).ok()?,
            _ => return None,
        };
        out.push((key >> 3, Field::Bytes(msg.get(..len)?)));
        msg = msg.get(len..)?;
    }
    Some(out)
}

fn decode_event(payload: &[u8]) -> Option<ReadEvent> {
    let mut event = ReadEvent { wall_time: 0.0, step: 0, file_version: None, scalars: Vec::new(), images: Vec::new() };
    for field in fields(payload)? {
        match field {
            (1, Field::Bytes(b)) => event.wall_time = f64::from_le_bytes(b.try_into().ok()?),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(b)) => event.file_version = Some(String::from_utf8_lossy(b).into()),
            (5, Field::Bytes(summary)) => {
                for field in fields(summary)? {
                    if let (1, Field::Bytes(value)) = field {
                        decode_value(value, &mut event)?;
                    }
                }
            }
            _ => {}
        }
    }
    Some(event)
}

/// Adds one Summary.Value's scalar or image (tag, width, height) to `event`.
fn decode_value(value: &[u8], event: &mut ReadEvent) -> Option<()> {
    let (mut tag, mut scalar, mut size) = (String::new(), None, None);
    for field in fields(value)? {
        match field {
            (1, Field::Bytes(b)) => tag = String::from_utf8_lossy(b).into(),
            (2, Field::Bytes(b)) => scalar = Some(f32::from_le_bytes(b.try_into().ok()?)),
            (4, Field::Bytes(image)) => {
                let (mut width, mut height) = (0, 0);
                for field in fields(image)? {
                    match field {
                        (1, Field::Varint(v)) => height = v as u32,
                        (2, Field::Varint(v)) => width = v as u32,
                        _ => {}
                    }
                }
                size = Some((width, height));
            }
            _ => {}
        }
    }
    if let Some(v) = scalar {
        event.scalars.push((tag.clone(), v));
    }
    if let Some((width, height)) = size {
        event.images.push((tag, width, height));
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc_matches_tensorboard() {
        // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c(b"123456789")
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }

    /// Four records: file_version, one scalar, two scalars of step -4, a 5x3 image.
    fn write_sample(dir: &Path) -> PathBuf {
        let mut writer = EventWriter::create(dir).unwrap();
        writer.scalar("loss", 3, 0.5).unwrap();
        let values = [("a".to_string(), 1.25), ("b/c".to_string(), f64::NAN)];
        writer.scalars(-4, &values).unwrap();
        let image = image::RgbImage::from_pixel(5, 3, image::Rgb([9, 8, 7]));
        writer.image("sample", 7, &image).unwrap();
        writer.path().to_path_buf()
    }

    #[test]
    fn round_trip_of_scalars_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(&dir.path().join("run"));
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert!(events[0].wall_time > 1.0e9);
        assert_eq!(events[1].step, 3);
        assert_eq!(events[1].scalars, [("loss".to_string(), 0.5)]);
        assert_eq!(events[2].step, -4);
        assert_eq!(events[2].scalars[0], ("a".to_string(), 1.25));
        assert_eq!(events[2].scalars[1].0, "b/c");
        assert!(events[2].scalars[1].1.is_nan());
        assert_eq!(events[3].step, 7);
        assert_eq!(events[3].images, [("sample".to_string(), 5, 3)]);
        assert!(events[3].scalars.is_empty());
    }

    #[test]
    fn corrupted_byte_names_the_record_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let mut data = std::fs::read(&path).unwrap();
        let second = 12 + u64::from_le_bytes(data[..8].try_into().unwrap()) as usize + 4;
        data[second + 14] ^= 0x40; // inside the second record's payload
        std::fs::write(&path, &data).unwrap();
        let err = read_events(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let message = err.to_string();
        assert!(message.contains(&format!("record at byte {second}:")), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn two_writers_get_different_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = EventWriter::create(dir.path()).unwrap();
        let second = EventWriter::create(dir.path()).unwrap();
        assert_ne!(first.path(), second.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_sample(dir.path());
        let data = std::fs::read(&path).unwrap();
        for cut in [data.len() - 1, data.len() - 5, 5] {
            std::fs::write(&path, &data[..cut]).unwrap();
            let err = read_events(&path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData, "cut at {cut}: {err}");
        }
    }
}
