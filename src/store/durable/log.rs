//! The commit log: each commit of the live state is one frame appended to the log and
//! synced before it is acknowledged (one sequential write of just its rows, where
//! SQLite would write every B-tree page they touch). `fold.rs` folds the frames into
//! `live.sqlite3`, the log's checkpoint; a segment is deleted once the file holds all
//! of it, synced. At start the file is brought up to the log's end before the engine
//! is loaded from it, so there is one way to load.
//!
//! The log is segments `live.log.<n>` (n from 1, zero-padded), each opening with
//! [`MAGIC`] (the format and its version). A frame is its payload's length (u32), the
//! length's complement (so a damaged length is told from a cut-off frame), the
//! payload's CRC-32C (u32) and the payload: the commit's sequence number (u64), its row
//! count (u32) and its rows. Numbers are little-endian; a string is its length (u32)
//! and UTF-8; a part is a presence byte and, if present, a string.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
};

/// The segments' names: this and a number.
pub(super) const PREFIX: &str = "live.log.";
/// Opens every segment: "CPLG" and the format's version.
const MAGIC: &[u8; 8] = b"CPLG\0\0\0\x01";
/// A segment past this size is closed and the next one opened.
pub(super) const SEGMENT_LIMIT: u64 = 64 << 20;
/// A frame's length, its complement and the checksum.
const HEADER: usize = 12;
/// A payload's sequence number and row count.
const PAYLOAD_HEAD: usize = 12;
/// Refuses a length no commit writes (`writer::MAX_BATCH` writes of bounded records),
/// so damage is not read as a frame of gigabytes.
const MAX_PAYLOAD: usize = 1 << 30;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// What a row does to its record in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Sets its parts, inserting the row if it is new.
    Upsert,
    /// Sets some of its parts; the row is there.
    Update,
    /// Leaves a tombstone.
    Remove,
}

impl Op {
    fn byte(self) -> u8 {
        match self {
            Op::Upsert => 0,
            Op::Update => 1,
            Op::Remove => 2,
        }
    }

    fn of(byte: u8) -> Option<Self> {
        [Op::Upsert, Op::Update, Op::Remove]
            .into_iter()
            .find(|op| op.byte() == byte)
    }
}

/// One record's change in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub op: Op,
    pub kind: String,
    pub id: String,
    pub region: String,
    pub version: u64,
    /// Its parts in its kind's order, `None` where the file keeps what it holds; none
    /// for a removal.
    pub parts: Vec<Option<String>>,
    /// When it was removed (ms since the epoch); 0 unless removed.
    pub removed_at: i64,
}

/// A commit's frame, built row by row.
pub(super) struct Encoder {
    buf: Vec<u8>,
    rows: u32,
}

impl Encoder {
    pub(super) fn new(seq: u64) -> Self {
        let mut buf = Vec::with_capacity(16 << 10);
        buf.extend_from_slice(&[0; HEADER]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, rows: 0 }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn row(
        &mut self,
        op: Op,
        kind: &str,
        id: &str,
        region: &str,
        version: u64,
        parts: &[Option<String>],
        removed_at: i64,
    ) {
        self.buf.push(op.byte());
        for text in [kind, id, region] {
            self.string(text);
        }
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.extend_from_slice(&removed_at.to_le_bytes());
        self.buf.push(parts.len() as u8);
        for part in parts {
            match part {
                Some(text) => {
                    self.buf.push(1);
                    self.string(text);
                }
                None => self.buf.push(0),
            }
        }
        self.rows += 1;
    }

    fn string(&mut self, text: &str) {
        self.buf
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(text.as_bytes());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The whole frame, as appended.
    pub(super) fn finish(mut self) -> Vec<u8> {
        let payload_len = (self.buf.len() - HEADER) as u32;
        self.buf[HEADER + 8..HEADER + PAYLOAD_HEAD].copy_from_slice(&self.rows.to_le_bytes());
        let crc = CRC.checksum(&self.buf[HEADER..]);
        self.buf[..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&(!payload_len).to_le_bytes());
        self.buf[8..HEADER].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A frame's payload read back: its sequence number and rows.
pub(super) fn decode(payload: &[u8]) -> Result<(u64, Vec<Row>), String> {
    let mut at = Cursor { bytes: payload };
    let seq = at.u64()?;
    let n = at.u32()?;
    let mut rows = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let op = at.take(1)?[0];
        let op = Op::of(op).ok_or_else(|| format!("unknown operation {op}"))?;
        let (kind, id, region) = (at.string()?, at.string()?, at.string()?);
        let version = at.u64()?;
        let removed_at = at.u64()? as i64;
        let count = at.take(1)?[0];
        let mut parts = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            parts.push(match at.take(1)?[0] {
                0 => None,
                1 => Some(at.string()?),
                other => return Err(format!("a part marked {other}")),
            });
        }
        rows.push(Row {
            op,
            kind,
            id,
            region,
            version,
            parts,
            removed_at,
        });
    }
    if !at.bytes.is_empty() {
        return Err(format!("{} bytes after its rows", at.bytes.len()));
    }
    Ok((seq, rows))
}

/// The payload of a whole frame (as `Encoder::finish` made it).
pub(super) fn payload(frame: &[u8]) -> &[u8] {
    &frame[HEADER..]
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("it ends inside a row".into());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
}

/// The path of segment `n` in `dir`.
pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:010}"))
}

/// The log's segments in `dir`, oldest first: (number, path).
pub(super) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((n, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Why the log cannot be read to its end.
#[derive(Debug)]
pub(super) enum Unread {
    /// A file of it is damaged or not citypark's: refused, never skipped.
    Damaged(PathBuf, String),
    /// A segment went away while it was read (a running server folded and deleted
    /// it): read again.
    Gone,
}

/// Where the log ends: the last whole frame's sequence number (0 if none) and the
/// last segment's number (0 if none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct End {
    pub seq: u64,
    pub segment: u64,
}

/// Calls `f` with every whole frame's sequence number and payload, oldest first.
/// A frame cut short or damaged at the very end of the last segment (what follows it
/// is its own declared length, or zeros) is a write that was interrupted: never
/// synced, never acknowledged; it ends the log. Damage anywhere else is an error.
pub(super) fn each_frame(
    dir: &Path,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), Unread>,
) -> Result<End, Unread> {
    let listed = segments(dir).map_err(|e| Unread::Damaged(dir.to_path_buf(), e.to_string()))?;
    let mut end = End::default();
    let last = listed.len().saturating_sub(1);
    for (i, (n, path)) in listed.iter().enumerate() {
        end.segment = *n;
        let damaged = |why: String| Unread::Damaged(path.clone(), why);
        let mut bytes = Vec::new();
        match File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unread::Gone),
            Err(e) => return Err(damaged(e.to_string())),
        }
        if bytes.len() < MAGIC.len() {
            // Created, but its opening was never synced: only the newest can be so.
            if i == last && MAGIC.starts_with(&bytes) {
                continue;
            }
            return Err(damaged("it is cut short before its header".into()));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(damaged(
                "it is not a citypark commit log, or one of a newer format".into(),
            ));
        }
        let mut at = MAGIC.len();
        while at < bytes.len() {
            let rest = &bytes[at..];
            let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4"));
            // The length, if the header is there and its length is not damaged.
            let len = (rest.len() >= HEADER && word(0) == !word(4)).then(|| word(0) as usize);
            let whole = len.is_some_and(|len| {
                (PAYLOAD_HEAD..=MAX_PAYLOAD).contains(&len)
                    && rest.len() >= HEADER + len
                    && CRC.checksum(&rest[HEADER..HEADER + len]) == word(8)
            });
            if !whole {
                // Cut off: its header is, or its declared end is past the file's, or
                // the file's blocks were allocated and never written.
                let interrupted = rest.len() < HEADER
                    || len.is_some_and(|len| HEADER + len > rest.len())
                    || rest.iter().all(|&b| b == 0);
                if i == last && interrupted {
                    tracing::warn!(
                        segment = %path.display(),
                        bytes = rest.len(),
                        "the commit log ends in an unfinished commit (never acknowledged); \
                         it is left out"
                    );
                    break;
                }
                return Err(damaged(format!(
                    "a commit at byte {at} is damaged (its checksum or length is wrong)"
                )));
            }
            let len = len.expect("a whole frame has its length");
            let payload = &rest[HEADER..HEADER + len];
            let seq = u64::from_le_bytes(payload[..8].try_into().expect("8"));
            f(seq, payload)?;
            end.seq = seq;
            at += HEADER + len;
        }
    }
    Ok(end)
}

/// The segment being appended to.
pub(super) struct Appender {
    dir: PathBuf,
    file: File,
    number: u64,
    len: u64,
    /// Set when a failed append could not be cut back off: nothing more is written.
    broken: bool,
}

impl Appender {
    /// Starts segment `number` in `dir` (which must not exist), synced with its header.
    pub(super) fn create(dir: &Path, number: u64) -> std::io::Result<Self> {
        let path = segment_path(dir, number);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            number,
            len: MAGIC.len() as u64,
            broken: false,
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn number(&self) -> u64 {
        self.number
    }

    pub(super) fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }

    /// Appends `frame` and syncs it: on `Ok` it is on disk. A failed append is cut off
    /// again, so the log never holds an unacknowledged commit before acknowledged ones.
    pub(super) fn append(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "an earlier failed write could not be undone; restart the server",
            ));
        }
        let written = self
            .file
            .write_all(frame)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(error) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(error)
            }
        }
    }

    /// Whether the segment is full.
    pub(super) fn full(&self) -> bool {
        self.len >= SEGMENT_LIMIT
    }
}

/// Syncs directory `dir`, so files created or removed in it stay so.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Vec<u8> {
        let mut e = Encoder::new(seq);
        e.row(
            Op::Upsert,
            "car_park",
            "p1",
            "qingdao",
            3,
            &[Some("1:{}".into()), None],
            0,
        );
        e.row(Op::Remove, "slots", "p1/2026-12-06", "qingdao", 9, &[], 42);
        e.finish()
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let f = frame(7);
        let (seq, rows) = decode(payload(&f)).unwrap();
        assert_eq!(seq, 7);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].parts, [Some("1:{}".to_owned()), None]);
        assert_eq!((rows[1].op, rows[1].removed_at), (Op::Remove, 42));
    }

    fn seqs(dir: &Path) -> Result<Vec<u64>, Unread> {
        let mut seen = Vec::new();
        each_frame(dir, |seq, _| {
            seen.push(seq);
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn an_interrupted_last_commit_ends_the_log_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Appender::create(dir.path(), 1).unwrap();
        for seq in 1..=3 {
            log.append(&frame(seq)).unwrap();
        }
        let path = log.path();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(seqs(dir.path()).unwrap(), [1, 2, 3]);
        // Cut inside the last frame, or zeros after it: the first two are the log.
        let one = frame(1).len();
        for tail in [whole[..whole.len() - 5].to_vec(), {
            let mut z = whole[..MAGIC.len() + 2 * one].to_vec();
            z.extend([0; 100]);
            z
        }] {
            std::fs::write(&path, &tail).unwrap();
            assert_eq!(seqs(dir.path()).unwrap(), [1, 2]);
        }
        // A flipped byte in the middle frame, with a whole frame after it: refused.
        let mut flipped = whole.clone();
        flipped[MAGIC.len() + one + HEADER + 20] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(seqs(dir.path()), Err(Unread::Damaged(..))));
        // A damaged length in the middle frame is not a cut-off frame: refused.
        let mut long = whole.clone();
        long[MAGIC.len() + one + 1] ^= 0x40;
        std::fs::write(&path, &long).unwrap();
        assert!(matches!(seqs(dir.path()), Err(Unread::Damaged(..))));
        // The same damage in a segment that is not the last: refused.
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        Appender::create(dir.path(), 2).unwrap();
        assert!(matches!(seqs(dir.path()), Err(Unread::Damaged(..))));
    }
}
