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
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    thread::JoinHandle,
};

/// The segments' names: this and a number.
pub(super) const PREFIX: &str = "live.log.";
/// Opens every segment: "CPLG" and the format's version.
const MAGIC: &[u8; 8] = b"CPLG\0\0\0\x01";
/// A spare segment's size; past it, the writer moves to the next one.
const SEGMENT_LIMIT: u64 = 64 << 20;
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

/// Calls `f` with every whole frame's sequence number and payload, oldest first.
/// A frame cut short or damaged at the very end of the last segment (what follows it
/// is its own declared length, or zeros) is a write that was interrupted: never
/// synced, never acknowledged; it ends the log. Damage anywhere else is an error.
pub(super) fn each_frame(
    dir: &Path,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), Unread>,
) -> Result<(), Unread> {
    let listed = segments(dir).map_err(|e| Unread::Damaged(dir.to_path_buf(), e.to_string()))?;
    let last = listed.len().saturating_sub(1);
    for (i, (_, path)) in listed.iter().enumerate() {
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
                // Cut off while it was written: nothing but zeros (a preallocated
                // segment's) after where it ends — its declared end, or its header's if
                // the length is not whole — or that end is past the file's.
                let end = HEADER + len.unwrap_or(0);
                let interrupted = rest.len() <= end || rest[end..].iter().all(|&b| b == 0);
                if rest.iter().all(|&b| b == 0) {
                    // A preallocated segment's zeros: not written yet.
                    break;
                }
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
            at += HEADER + len;
        }
    }
    Ok(())
}

/// The segment being appended to, and the spare it moves to next.
///
/// A spare (`live.log.spare`, which `segments` skips) is a segment written whole with
/// zeros and synced before any commit goes there: an append then overwrites blocks the
/// file has, so its sync writes no file-system metadata (appending to a growing file
/// made each sync wait for the file system's journal, and with it for other files'
/// writes). It is made on a thread of its own once the current segment holds
/// [`SPARE_AFTER`], so a server that writes little never writes one, and the writer
/// moves to it when the current segment is full or was never preallocated.
pub(super) struct Appender {
    dir: PathBuf,
    file: File,
    number: u64,
    len: u64,
    /// The file's preallocated end: appends below it overwrite zeros.
    allocated: u64,
    /// The spare being made.
    making: Option<JoinHandle<std::io::Result<()>>>,
    /// A spare is made and synced.
    spare: bool,
    /// Set when a failed append could not be cut back off: nothing more is written.
    broken: bool,
}

/// A spare segment's name.
const SPARE: &str = "live.log.spare";
/// A spare is made once the current segment holds this much.
const SPARE_AFTER: u64 = 1 << 20;

impl Appender {
    /// Starts segment `number` in `dir` (which must not exist), synced with its header;
    /// a spare left by an earlier run is removed.
    pub(super) fn create(dir: &Path, number: u64) -> std::io::Result<Self> {
        match std::fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let path = segment_path(dir, number);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            number,
            len: MAGIC.len() as u64,
            allocated: MAGIC.len() as u64,
            making: None,
            spare: false,
            broken: false,
        })
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }

    /// Appends `frame` and syncs it: on `Ok` it is on disk. A failed append is cut off
    /// again, so the log never holds an unacknowledged commit before acknowledged ones.
    /// Then moves to the spare if it is time: the segment closed, if one was.
    pub(super) fn append(&mut self, frame: &[u8]) -> std::io::Result<Option<PathBuf>> {
        if self.broken {
            return Err(std::io::Error::other(
                "an earlier failed write could not be undone; restart the server",
            ));
        }
        let written = self
            .file
            .write_all_at(frame, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            // Its zeros go too: what follows is appended.
            match self.file.set_len(self.len) {
                Ok(()) => self.allocated = self.len,
                Err(_) => self.broken = true,
            }
            return Err(error);
        }
        self.len += frame.len() as u64;
        Ok(self.move_on())
    }

    fn move_on(&mut self) -> Option<PathBuf> {
        if self.making.as_ref().is_some_and(JoinHandle::is_finished) {
            let made = self.making.take().expect("checked").join();
            match made {
                Ok(Ok(())) => self.spare = true,
                Ok(Err(error)) => tracing::warn!(%error, "making a commit log spare segment"),
                Err(_) => tracing::warn!("making a commit log spare segment panicked"),
            }
        }
        if self.making.is_none() && !self.spare && self.len >= SPARE_AFTER {
            let path = self.dir.join(SPARE);
            let made = std::thread::Builder::new()
                .name("citypark-live-spare".into())
                .spawn(move || make_spare(&path));
            match made {
                Ok(making) => self.making = Some(making),
                Err(error) => tracing::warn!(%error, "starting to make a commit log spare"),
            }
        }
        let due = self.len >= SEGMENT_LIMIT || self.allocated < SEGMENT_LIMIT;
        if !(self.spare && due) {
            // A full segment goes on growing until its spare is made.
            return None;
        }
        match self.take_spare() {
            Ok(closed) => Some(closed),
            Err(error) => {
                tracing::warn!(%error, "moving to the commit log's spare segment");
                self.spare = false;
                None
            }
        }
    }

    /// Renames the spare to the next segment and appends there from now on; the path
    /// of the segment closed.
    fn take_spare(&mut self) -> std::io::Result<PathBuf> {
        let number = self.number + 1;
        let path = segment_path(&self.dir, number);
        std::fs::rename(self.dir.join(SPARE), &path)?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        let closed = self.path();
        self.file = file;
        self.number = number;
        self.len = MAGIC.len() as u64;
        self.allocated = SEGMENT_LIMIT;
        self.spare = false;
        Ok(closed)
    }
}

impl Drop for Appender {
    /// A spare still being made is waited for, so nothing writes in the directory
    /// after the writer has stopped.
    fn drop(&mut self) {
        if let Some(making) = self.making.take() {
            let _ = making.join();
        }
    }
}

/// Makes a spare segment at `path`: the header, zeros up to [`SEGMENT_LIMIT`], synced.
fn make_spare(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().create_new(true).write(true).open(path)?;
    file.write_all(MAGIC)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = SEGMENT_LIMIT - MAGIC.len() as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Removes the spare segment of `dir`, if there is one.
pub(super) fn remove_spare(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SPARE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
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

    /// A frame of `seq` with a part of `bytes` bytes.
    fn big(seq: u64, bytes: usize) -> Vec<u8> {
        let mut e = Encoder::new(seq);
        e.row(
            Op::Upsert,
            "k",
            "i",
            "r",
            seq,
            &[Some("x".repeat(bytes))],
            0,
        );
        e.finish()
    }

    #[test]
    fn the_writer_moves_to_a_preallocated_spare_and_the_log_reads_on_across_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Appender::create(dir.path(), 1).unwrap();
        let mut seq = 0;
        let closed = loop {
            seq += 1;
            assert!(seq < 10_000, "no move to a spare");
            if let Some(closed) = log.append(&big(seq, 64 << 10)).unwrap() {
                break closed;
            }
            if seq > 16 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        assert_eq!(closed, segment_path(dir.path(), 1));
        for _ in 0..3 {
            seq += 1;
            assert_eq!(log.append(&big(seq, 100)).unwrap(), None);
        }
        let next = segment_path(dir.path(), 2);
        assert_eq!(std::fs::metadata(&next).unwrap().len(), SEGMENT_LIMIT);
        assert_eq!(seqs(dir.path()).unwrap(), (1..=seq).collect::<Vec<_>>());
        drop(log);
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
            assert_eq!(log.append(&frame(seq)).unwrap(), None);
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
        // Cut inside the last frame with zeros after it (a preallocated segment's):
        // the first two.
        // (The frame ends in zeros of its own: cut into its last non-zero byte.)
        let mut torn = whole[..whole.len() - 12].to_vec();
        torn.extend([0; 4096]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(seqs(dir.path()).unwrap(), [1, 2]);
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
