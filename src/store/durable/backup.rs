//! `citypark backup`: a consistent copy of a data directory, taken while its server
//! runs, as one tar file that unpacks into a directory to start on.
//!
//! Each database is copied with `VACUUM INTO`, a read transaction (WAL readers never
//! block the writer, nor it them): a snapshot of one instant, compacted; the live
//! state's copy then gets the commits its log holds beyond that instant folded in. The
//! live state is copied before history, so nothing falls between them: the hand-off writes a
//! finished record to history before it deletes it from live state, so a record gone
//! from the live copy was in history before the history copy began (one in both is
//! written to history again, harmlessly, by the restored server's hand-off).

use std::{
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use crate::domain::{Error, Result};

/// What a backup holds, in the order it is taken.
const HISTORY: &str = "history.sqlite3";
const PLATE_KEY: &str = "plate-key";

/// What was backed up: each file's name in the archive and its size.
#[derive(Debug, Clone)]
pub struct Backup {
    pub files: Vec<(String, u64)>,
    pub to: PathBuf,
}

/// Backs up the data directory `dir` to the tar file `to`, which must not exist. The
/// archive holds `live.sqlite3`, `history.sqlite3` (when history is that file) and
/// `plate-key` (when it is there); `tar -xf FILE -C NEW_DIR` restores them.
pub fn backup(dir: &Path, to: &Path) -> Result<Backup> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| Error::invalid("--to", format!("{what}: {e}"));
    if to.exists() {
        return Err(Error::invalid(
            "--to",
            format!("{} exists already; a backup never overwrites", to.display()),
        ));
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The copies are made beside the archive (its file system has room for it), and
    // removed when done, whatever happens.
    let scratch = Scratch::make(to)?;
    let mut files = Vec::new();
    live_copy(dir, &scratch.0.as_path().join(super::FILE))?;
    files.push(super::FILE);
    let history = dir.join(HISTORY);
    if history.exists() {
        let conn = rusqlite::Connection::open_with_flags(
            &history,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| failed(&history.display().to_string(), &e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| failed(&history.display().to_string(), &e))?;
        vacuum_into(&conn, &scratch.0.as_path().join(HISTORY))?;
        files.push(HISTORY);
    }
    let key = dir.join(PLATE_KEY);
    if key.exists() {
        std::fs::copy(&key, scratch.0.as_path().join(PLATE_KEY))
            .map_err(|e| failed(&key.display().to_string(), &e))?;
        files.push(PLATE_KEY);
    }
    // Written under another name and renamed once synced, so `to` is whole or absent.
    let partial = scratch.0.as_path().join("backup.tar");
    let mut sizes = Vec::new();
    {
        let mut archive =
            File::create(&partial).map_err(|e| failed(&partial.display().to_string(), &e))?;
        for name in &files {
            let path = scratch.0.as_path().join(name);
            let size = append(&mut archive, name, &path)
                .map_err(|e| failed(&path.display().to_string(), &e))?;
            sizes.push(((*name).to_owned(), size));
        }
        // The end of an archive: two zero blocks.
        archive
            .write_all(&[0; 1024])
            .and_then(|()| archive.sync_all())
            .map_err(|e| failed(&partial.display().to_string(), &e))?;
    }
    std::fs::rename(&partial, to).map_err(|e| failed(&to.display().to_string(), &e))?;
    if let Ok(parent) = File::open(&parent) {
        let _ = parent.sync_all();
    }
    Ok(Backup {
        files: sizes,
        to: to.to_path_buf(),
    })
}

/// Copies the live state of `dir` to `path`: the file as of one instant, then the
/// commits the log holds beyond it, so the copy holds every commit acknowledged before
/// the backup began and is a file a server starts on without a log. A segment the
/// running server folds and deletes meanwhile makes it start again.
fn live_copy(dir: &Path, path: &Path) -> Result<()> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let live = super::file::open_to_read(dir)?;
        vacuum_into(&live, path)?;
        drop(live);
        let failed =
            |e: rusqlite::Error| Error::invalid("--to", format!("{}: {e}", path.display()));
        let mut copy = rusqlite::Connection::open(path).map_err(failed)?;
        let tx = copy.transaction().map_err(failed)?;
        match super::fold::catch_up(&tx, dir, true) {
            Ok(_) => return tx.commit().map_err(failed),
            Err(super::log::Unread::Gone) => {
                drop(tx);
                drop(copy);
                std::fs::remove_file(path)
                    .map_err(|e| Error::invalid("--to", format!("{}: {e}", path.display())))?;
            }
            Err(super::log::Unread::Damaged(at, why)) => {
                return Err(super::file::refuse(&at, why));
            }
        }
    }
    Err(Error::Unavailable(format!(
        "the live state of {} changed under {ATTEMPTS} attempts to copy it; try again",
        dir.display()
    )))
}

/// The directory the copies are made in (`<to>.partial`), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn make(to: &Path) -> Result<Self> {
        let mut name = to.as_os_str().to_owned();
        name.push(".partial");
        let path = PathBuf::from(name);
        std::fs::create_dir(&path).map_err(|e| {
            Error::invalid(
                "--to",
                format!(
                    "{}: {e} (another backup to the same file runs, or one was interrupted: \
                     remove the directory)",
                    path.display()
                ),
            )
        })?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A consistent, compacted copy of the database `conn` at `path`.
fn vacuum_into(conn: &rusqlite::Connection, path: &Path) -> Result<()> {
    conn.execute("VACUUM INTO ?1", [path.display().to_string()])
        .map(drop)
        .map_err(|e| Error::invalid("--to", format!("copying to {}: {e}", path.display())))
}

/// Appends file `path` to a tar archive as `name` (a POSIX ustar entry, mode 0600);
/// its size.
fn append(archive: &mut File, name: &str, path: &Path) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    archive.write_all(&ustar_header(name, size)?)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "the file shrank while it was archived",
            ));
        }
        archive.write_all(&buffer[..n])?;
        left = left.saturating_sub(n as u64);
    }
    let padding = (512 - size % 512) % 512;
    archive.write_all(&vec![0; padding as usize])?;
    Ok(size)
}

/// The 512-byte ustar header of a regular file `name` of `size` bytes.
fn ustar_header(name: &str, size: u64) -> std::io::Result<[u8; 512]> {
    // Eleven octal digits: sizes below 8 GiB; a larger database needs another tool.
    if name.len() >= 100 || size >= 1 << 33 {
        return Err(std::io::Error::other(format!(
            "{name} cannot be archived: name or size too large for a tar header"
        )));
    }
    let mut header = [0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, name.as_bytes());
    put(100, b"0000600\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    put(136, format!("{mtime:011o}\0").as_bytes());
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(header)
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_carry_the_checksum_tar_expects() {
        let header = super::ustar_header("live.sqlite3", 1536).unwrap();
        assert_eq!(&header[..12], b"live.sqlite3");
        assert_eq!(&header[124..136], b"00000003000\0");
        // The checksum is the sum of the header's bytes with its own field as spaces.
        let mut blank = header;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&header[148..156], format!("{sum:06o}\0 ").as_bytes());
        assert!(super::ustar_header(&"x".repeat(100), 1).is_err());
    }
}
