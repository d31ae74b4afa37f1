//! The part of the zip format `torch.save` writes (PyTorch's miniz writer): stored
//! (uncompressed) entries, sizes in the central directory (local headers carry a data
//! descriptor flag and zero sizes), zip64 records, CRC-32 per entry. Entries are read on
//! demand, so a large checkpoint is not loaded whole.

use std::io::{Read, Seek, SeekFrom};

/// One entry of the central directory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub name: String,
    method: u16,
    flags: u16,
    crc: u32,
    size: u64,
    local_offset: u64,
}

/// An open archive: its central directory and the reader it came from.
pub(super) struct ZipArchive<R> {
    reader: R,
    len: u64,
    pub entries: Vec<Entry>,
}

const EOCD: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EOCD: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl<R: Read + Seek> ZipArchive<R> {
    /// Reads the central directory. A file without one (truncated, or not a zip) is an
    /// error saying so.
    pub fn open(mut reader: R) -> Result<Self, String> {
        let len = reader.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
        // The end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB.
        let tail_len = len.min(22 + 65_535);
        let tail = read_at(&mut reader, len - tail_len, tail_len as usize)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i) == EOCD)
            .ok_or("no zip end-of-central-directory record (the file is truncated, or not a zip archive)")?;
        let eocd_pos = len - tail_len + eocd as u64;
        let mut count = u64::from(u16_at(&tail, eocd + 10));
        let mut cd_size = u64::from(u32_at(&tail, eocd + 12));
        let mut cd_offset = u64::from(u32_at(&tail, eocd + 16));
        if eocd >= 20 && u32_at(&tail, eocd - 20) == ZIP64_LOCATOR {
            let at = u64_at(&tail, eocd - 20 + 8);
            let rec = read_at(&mut reader, at, 56).map_err(|_| "the zip64 end record lies outside the file")?;
            if u32_at(&rec, 0) != ZIP64_EOCD {
                return Err("the zip64 end record is missing (the file is corrupt)".into());
            }
            (count, cd_size, cd_offset) = (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48));
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > eocd_pos) {
            return Err("the zip central directory lies outside the file (truncated or corrupt)".into());
        }
        let cd = read_at(&mut reader, cd_offset, cd_size as usize)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for _ in 0..count {
            let fixed = cd.get(at..at + 46).ok_or("the zip central directory is truncated")?;
            if u32_at(fixed, 0) != CENTRAL {
                return Err("bad zip central directory entry (the file is corrupt)".into());
            }
            let (name_len, extra_len, comment_len) =
                (u16_at(fixed, 28) as usize, u16_at(fixed, 30) as usize, u16_at(fixed, 32) as usize);
            let name_bytes = cd.get(at + 46..at + 46 + name_len).ok_or("the zip central directory is truncated")?;
            let extra = cd
                .get(at + 46 + name_len..at + 46 + name_len + extra_len)
                .ok_or("the zip central directory is truncated")?;
            let mut entry = Entry {
                name: String::from_utf8_lossy(name_bytes).into_owned(),
                flags: u16_at(fixed, 8),
                method: u16_at(fixed, 10),
                crc: u32_at(fixed, 16),
                size: u64::from(u32_at(fixed, 20)),
                local_offset: u64::from(u32_at(fixed, 42)),
            };
            let compressed = u32_at(fixed, 20);
            apply_zip64(&mut entry, compressed, u32_at(fixed, 24), extra)?;
            entries.push(entry);
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(Self { reader, len, entries })
    }

    /// The bytes of the entry `name`, CRC-checked.
    pub fn read(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let entry = self.entries.iter().find(|e| e.name == name).ok_or_else(|| format!("no zip entry `{name}`"))?;
        let entry = entry.clone();
        if entry.flags & 1 != 0 {
            return Err(format!("zip entry `{name}` is encrypted"));
        }
        if entry.method != 0 {
            return Err(format!(
                "zip entry `{name}` is compressed (method {}); torch.save stores entries uncompressed, \
                 so the file was re-packed by another tool",
                entry.method
            ));
        }
        let local = read_at(&mut self.reader, entry.local_offset, 30)
            .map_err(|_| format!("zip entry `{name}` lies outside the file (truncated)"))?;
        if u32_at(&local, 0) != LOCAL {
            return Err(format!("zip entry `{name}` has no local header (the file is corrupt)"));
        }
        let start = entry.local_offset + 30 + u64::from(u16_at(&local, 26)) + u64::from(u16_at(&local, 28));
        if start.checked_add(entry.size).is_none_or(|end| end > self.len) {
            return Err(format!("zip entry `{name}` runs past the end of the file (truncated)"));
        }
        let data = read_at(&mut self.reader, start, entry.size as usize)?;
        if crc32(&data) != entry.crc {
            return Err(format!("zip entry `{name}` fails its CRC-32 check (the file is corrupt)"));
        }
        Ok(data)
    }
}

/// Fills 32-bit fields saturated at 0xFFFFFFFF from the zip64 extra field (id 1), whose
/// values appear in the order uncompressed size, compressed size, local header offset.
fn apply_zip64(entry: &mut Entry, compressed: u32, uncompressed: u32, mut extra: &[u8]) -> Result<(), String> {
    let saturated = [uncompressed == u32::MAX, compressed == u32::MAX, entry.local_offset == u64::from(u32::MAX)];
    if !saturated.contains(&true) {
        return Ok(());
    }
    while extra.len() >= 4 {
        let (id, size) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
        let body = extra.get(4..4 + size).ok_or("bad zip64 extra field")?;
        if id == 1 {
            let mut values = body.chunks_exact(8).map(|c| u64_at(c, 0));
            let mut next = |wanted: bool| if wanted { values.next().ok_or("short zip64 extra field") } else { Ok(0) };
            let (u, c, off) = (next(saturated[0])?, next(saturated[1])?, next(saturated[2])?);
            if saturated[1] {
                entry.size = c;
            } else if saturated[0] {
                entry.size = u;
            }
            if saturated[2] {
                entry.local_offset = off;
            }
            return Ok(());
        }
        extra = &extra[4 + size..];
    }
    Err(format!("zip entry `{}` has 32-bit fields saturated but no zip64 extra field", entry.name))
}

fn read_at<R: Read + Seek>(reader: &mut R, at: u64, len: usize) -> Result<Vec<u8>, String> {
    reader.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).map_err(|e| format!("reading {len} bytes at offset {at}: {e}"))?;
    Ok(buf)
}

/// CRC-32 (IEEE, as zip uses it).
pub(super) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal stored zip with the given entries (no zip64), as a test input.
    fn stored_zip(entries: &[(&str, &[u8])], method: u16) -> Vec<u8> {
        let (mut out, mut cd) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let header = |sig: u32, central: bool| {
                let mut h = sig.to_le_bytes().to_vec();
                if central {
                    h.extend_from_slice(&[20, 0]);
                }
                h.extend_from_slice(&[20, 0, 0, 0]);
                h.extend_from_slice(&method.to_le_bytes());
                h.extend_from_slice(&[0; 4]);
                h.extend_from_slice(&crc.to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(name.len() as u16).to_le_bytes());
                h.extend_from_slice(&[0, 0]);
                if central {
                    h.extend_from_slice(&[0; 10]); // comment length, disk, attributes
                    h.extend_from_slice(&offset.to_le_bytes());
                }
                h.extend_from_slice(name.as_bytes());
                h
            };
            out.extend(header(LOCAL, false));
            out.extend_from_slice(data);
            cd.extend(header(CENTRAL, true));
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&cd);
        out.extend_from_slice(&EOCD.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn crc32_of_known_strings() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn reads_stored_entries_and_rejects_compressed_ones() {
        let zip = stored_zip(&[("a/data.pkl", b"hello"), ("a/data/0", b"\x01\x02")], 0);
        let mut z = ZipArchive::open(Cursor::new(zip)).unwrap();
        assert_eq!(z.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a/data.pkl", "a/data/0"]);
        assert_eq!(z.read("a/data/0").unwrap(), b"\x01\x02");
        assert!(z.read("a/nope").unwrap_err().contains("no zip entry `a/nope`"));
        let zip = stored_zip(&[("a/data.pkl", b"hello")], 8);
        let err = ZipArchive::open(Cursor::new(zip)).unwrap().read("a/data.pkl").unwrap_err();
        assert!(err.contains("compressed (method 8)"), "{err}");
    }

    #[test]
    fn corrupt_and_truncated_archives_are_errors() {
        let mut zip = stored_zip(&[("a/data.pkl", b"hello")], 0);
        let at = zip.windows(5).position(|w| w == b"hello").unwrap();
        zip[at] = b'j';
        let err = ZipArchive::open(Cursor::new(zip.clone())).unwrap().read("a/data.pkl").unwrap_err();
        assert!(err.contains("CRC-32"), "{err}");
        for cut in [0, 10, zip.len() - 30, zip.len() - 1] {
            assert!(ZipArchive::open(Cursor::new(zip[..cut].to_vec())).is_err(), "cut at {cut}");
        }
    }
}
