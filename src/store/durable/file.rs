//! The live-state file, `live.sqlite3` in the data directory: opened only after it
//! proves to be whole and citypark's, so a damaged file stops the start instead of
//! becoming an empty city.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags};

use crate::domain::{Error, Result};

/// The file's name in the data directory.
pub const FILE: &str = "live.sqlite3";
/// The lock held while a server (or an export) uses the directory.
const LOCK: &str = "live.lock";

/// `PRAGMA application_id` of a citypark live-state file ("CPLV"), so a file of
/// anything else is never mistaken for an empty one.
const APPLICATION_ID: i32 = 0x4350_4c56;
/// The schema this version writes (`PRAGMA user_version`): 2 adds `folded` (the
/// commit log came with it; a version without the log must not open a file with one).
const SCHEMA: i32 = 2;

/// The schema: one row per record, its parts in its kind's part order (at most
/// [`MAX_PARTS`]), each `<format>:<json>` as in Redis. A row whose parts are all NULL is
/// a tombstone: the version the record was removed at, so its versions only grow;
/// `removed_at` (ms since the epoch) says when, for compaction. WITHOUT ROWID: the key
/// is the table, one B-tree, no second lookup.
const CREATE: &str = "
CREATE TABLE records (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    region     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    p0         TEXT,
    p1         TEXT,
    removed_at INTEGER,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
";

/// The commit of the log (`log.rs`) the file holds everything up to: one row.
const CREATE_FOLDED: &str = "
CREATE TABLE folded (seq INTEGER NOT NULL);
INSERT INTO folded (seq) VALUES (0);
";

/// Parts a kind may have (columns p0, p1).
pub const MAX_PARTS: usize = 2;

/// Sets one record's parts (a part left NULL keeps what the row holds).
pub const UPSERT: &str = "
INSERT INTO records (kind, id, region, version, p0, p1, removed_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
ON CONFLICT (kind, id) DO UPDATE SET
    region = excluded.region,
    version = excluded.version,
    p0 = coalesce(excluded.p0, p0),
    p1 = coalesce(excluded.p1, p1),
    removed_at = NULL
";

/// Sets some of a record's parts, the row being there (a partial write needs its
/// record): one lookup, where `UPSERT` tries an insert first.
pub const UPDATE: &str = "
UPDATE records SET
    region = ?3,
    version = ?4,
    p0 = coalesce(?5, p0),
    p1 = coalesce(?6, p1),
    removed_at = NULL
WHERE kind = ?1 AND id = ?2
";

/// Leaves a tombstone where a record was.
pub const REMOVE: &str = "
INSERT INTO records (kind, id, region, version, p0, p1, removed_at)
VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5)
ON CONFLICT (kind, id) DO UPDATE SET
    region = excluded.region,
    version = excluded.version,
    p0 = NULL,
    p1 = NULL,
    removed_at = excluded.removed_at
";

/// A data directory held by this process: no second server (or export) can use it
/// until it is dropped.
pub struct Held {
    pub path: PathBuf,
    _lock: File,
}

/// Why the file cannot be used, for the operator: what is wrong and what to do.
pub fn refuse(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::invalid(
        "--data-dir",
        format!(
            "{} cannot be used: {why}. citypark does not start on a damaged live state; \
             restore the directory from a backup (`citypark backup`), or move the file \
             away to start an empty city",
            path.display()
        ),
    )
}

/// Takes the data directory `dir` (made if missing) for this process.
pub fn hold(dir: &Path) -> Result<Held> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::invalid("--data-dir", format!("{}: {e}", dir.display())))?;
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::invalid("--data-dir", format!("{}: {e}", lock_path.display())))?;
    // An advisory lock, released by the kernel when the process dies however it dies.
    // SAFETY: flock takes the descriptor of a file this function holds open.
    let locked = unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
    };
    if locked != 0 {
        return Err(Error::invalid(
            "--data-dir",
            format!(
                "{} is in use by another citypark process (one server per data directory)",
                dir.display()
            ),
        ));
    }
    Ok(Held {
        path: dir.join(FILE),
        _lock: lock,
    })
}

/// Opens the live-state file for writing, creating it if the directory has none;
/// refuses a file that is empty, damaged, not citypark's, or of a newer schema.
pub fn open(held: &Held) -> Result<Connection> {
    let path = &held.path;
    let existed = match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(refuse(path, "it is empty (0 bytes): truncated?"));
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(refuse(path, e)),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | if existed {
            OpenFlags::empty()
        } else {
            OpenFlags::SQLITE_OPEN_CREATE
        };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| refuse(path, e))?;
    let pragma = |name: &str| -> Result<i64> {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .map_err(|e| refuse(path, e))
    };
    if existed {
        let id = pragma("application_id")?;
        if id != i64::from(APPLICATION_ID) {
            return Err(refuse(
                path,
                format!("it is not a citypark live-state file (application_id {id:#x})"),
            ));
        }
        let schema = pragma("user_version")?;
        if schema > i64::from(SCHEMA) {
            return Err(refuse(
                path,
                format!(
                    "it was written by a newer citypark (schema {schema}, this one reads {SCHEMA})"
                ),
            ));
        }
        check(&conn, path)?;
    }
    // WAL, so readers (a backup) never block the folder, synced at
    // every commit while the log is folded in at start; the folder then syncs only
    // where it deletes a segment (the log is what makes a commit durable).
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(|e| refuse(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(refuse(
            path,
            format!("it cannot be put in WAL mode ({mode})"),
        ));
    }
    // The WAL is checkpointed into the file by the folder's own commits (SQLite's
    // automatic checkpoint past 4 MiB of WAL, about every fold): nobody waits for them.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA wal_autocheckpoint = 1000;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -16384;",
    )
    .map_err(|e| refuse(path, e))?;
    if !existed {
        let tx = conn.unchecked_transaction().map_err(|e| refuse(path, e))?;
        tx.execute_batch(CREATE).map_err(|e| refuse(path, e))?;
        upgrade(&tx, path)?;
        tx.commit().map_err(|e| refuse(path, e))?;
    }
    Ok(conn)
}

/// Brings a file of an earlier schema to this one, in `tx` (the start's, so a start
/// refused later leaves the file as it was): schema 1 gets `folded`.
pub fn upgrade(tx: &rusqlite::Transaction<'_>, path: &Path) -> Result<()> {
    let schema: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| refuse(path, e))?;
    if schema < i64::from(SCHEMA) {
        tx.execute_batch(CREATE_FOLDED)
            .map_err(|e| refuse(path, e))?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA};"
        ))
        .map_err(|e| refuse(path, e))?;
    }
    Ok(())
}

/// `PRAGMA quick_check`: every page and record well formed (a truncated or
/// overwritten file fails it), in one pass over the file.
fn check(conn: &Connection, path: &Path) -> Result<()> {
    let mut statement = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| refuse(path, e))?;
    let found: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| refuse(path, e))?;
    if found != ["ok"] {
        return Err(refuse(
            path,
            format!("its integrity check failed: {}", found.join("; ")),
        ));
    }
    Ok(())
}

/// Opens the live-state file of `dir` to read, whether or not a server runs on it
/// (WAL readers never block the writer).
pub fn open_to_read(dir: &Path) -> Result<Connection> {
    let path = dir.join(FILE);
    if !path.exists() {
        return Err(Error::invalid(
            "--data-dir",
            format!("{} has no live state ({FILE})", dir.display()),
        ));
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| refuse(&path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| refuse(&path, e))?;
    let id: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|e| refuse(&path, e))?;
    if id != i64::from(APPLICATION_ID) {
        return Err(refuse(&path, "it is not a citypark live-state file"));
    }
    Ok(conn)
}
