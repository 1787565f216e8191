//! What a replicated aggregate is, once for every kind (garage's `TableSchema`, for us).
//!
//! An aggregate kind — car parks, reservations and their slot counts; shared offers, sessions
//! and wallets later — is a small schema file: its name, the format its records are
//! written in, the Redis hashes its parts live in, how a part is encoded and decoded
//! (migrating older formats), and the engine index it replicates into (`Replica`).
//! Writes, the change stream, snapshot loads and the stream follower are written once,
//! for any kind, against this trait.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    domain::{RegionId, Result, Timestamp},
    engine::{Engine, Replica},
};

/// One kind of replicated aggregate.
pub trait Aggregate: Clone + Send + Sync + 'static {
    /// The kind's name: the `k` field of change-stream entries, and a metric label.
    const KIND: &'static str;
    /// The format this version writes records in; `decode` reads it and every older one.
    const FORMAT: u32;
    /// The region's hash of versions (kept after a delete, a tombstone, so an id's
    /// versions only grow), relative to the region's key prefix.
    const VERSIONS: &'static str;
    /// The region's hashes a record's parts are kept in, relative to the region's key
    /// prefix. Parts are stored apart so that a write of one part (live counts) does not
    /// rewrite the others (the registration).
    const PARTS: &'static [&'static str];

    /// The region whose keys (and Redis Cluster slot) hold the record.
    fn region(&self) -> &RegionId;

    /// The JSON of part `part` (an index into `PARTS`).
    fn encode_part(&self, part: usize) -> String;

    /// A record from its stored parts, each with the format it was written in; a part
    /// that is `None` was not written by this change and comes from `base`.
    fn decode(parts: &[Option<Stored<'_>>], base: Option<&Self>) -> Result<Self, DecodeError>;

    /// The engine's index of this kind.
    fn replica(engine: &Engine) -> &dyn Replica<Self>;

    /// Whether a removed record's tombstone (its last version) is dropped once past
    /// the change stream's reach: every kind but the car park, whose ids' versions keep
    /// growing across deletes and regions.
    const COMPACTED: bool = true;
}

/// Notes, in `engine`, that record `id` of kind `A` was removed at `version`, so its
/// tombstone is compacted after the grace (if the kind's are).
pub fn note_removed<A: Aggregate>(engine: &Engine, id: &str, version: u64) {
    fn forget<A: Aggregate>(engine: &Engine, id: &str, version: u64) -> bool {
        A::replica(engine).forget(id, version)
    }
    if A::COMPACTED {
        engine.note_tombstone(A::KIND, id, version, forget::<A>);
    }
}

/// A kind of one part, written whole by every change, in format 1: `$kind` records in
/// the version hash `$versions` and the part hash `$part`.
macro_rules! whole_record_kind {
    ($t:ty, $kind:literal, $versions:literal, $part:literal) => {
        impl $crate::store::Aggregate for $t {
            const KIND: &'static str = $kind;
            const FORMAT: u32 = 1;
            const VERSIONS: &'static str = $versions;
            const PARTS: &'static [&'static str] = &[$part];

            fn region(&self) -> &$crate::domain::RegionId {
                &self.region
            }

            fn encode_part(&self, _part: usize) -> String {
                $crate::store::table::encode(Self::FORMAT, self)
            }

            fn decode(
                parts: &[Option<$crate::store::table::Stored<'_>>],
                base: Option<&Self>,
            ) -> Result<Self, $crate::store::table::DecodeError> {
                match (parts.first().copied().flatten(), base) {
                    (Some(stored), _) => stored.json(Self::FORMAT),
                    (None, Some(base)) => Ok(base.clone()),
                    (None, None) => Err($crate::store::table::DecodeError::MissingBase),
                }
            }

            fn replica(engine: &$crate::engine::Engine) -> &dyn $crate::engine::Replica<Self> {
                engine
            }
        }
    };
}

pub(crate) use whole_record_kind;

/// Which parts of a record a write sets, as a bit per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts(u32);

impl Parts {
    /// Every part.
    pub const ALL: Parts = Parts(u32::MAX);

    /// Only part `i`.
    pub const fn only(i: usize) -> Self {
        Parts(1 << i)
    }

    /// Whether part `i` is set.
    pub fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// What a write does to one record.
#[derive(Debug, Clone)]
pub enum Change<A> {
    /// Sets the record; only `parts` are stored anew (the others must exist already).
    /// `steps` are states it passes through first, oldest first (several reports on
    /// one car park decided together): each is a version of its own, so watchers on
    /// every instance see each. Usually empty.
    Put {
        record: A,
        parts: Parts,
        steps: Vec<A>,
    },
    /// Removes the record, leaving its version as a tombstone.
    Delete,
}

/// One compare-and-set of one record.
#[derive(Debug, Clone)]
pub struct Write<A> {
    pub region: RegionId,
    pub id: String,
    /// The version the change was computed from; the write is refused if the record is
    /// at another one now.
    pub expected: u64,
    /// A version the new one must exceed besides `expected` (an id re-created after a
    /// delete in another region continues above its old versions); 0 if none.
    pub floor: u64,
    pub change: Change<A>,
}

impl<A> Change<A> {
    /// Sets `parts` of the record.
    pub fn put(record: A, parts: Parts) -> Self {
        Change::Put {
            record,
            parts,
            steps: Vec::new(),
        }
    }
}

/// A write of any kind, its kind erased, so that writes of several kinds can be
/// committed together, all or none (`Store::commit_group`): a reservation and the slot
/// counts it takes, a session and the wallet it debits.
pub struct AnyWrite(Box<dyn Erased>);

impl<A: Aggregate> From<Write<A>> for AnyWrite {
    fn from(write: Write<A>) -> Self {
        AnyWrite(Box::new(write))
    }
}

impl fmt::Debug for AnyWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}@{}", self.0.kind(), self.0.id(), self.0.expected())
    }
}

impl AnyWrite {
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    pub fn region(&self) -> &RegionId {
        self.0.region()
    }

    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// The write as a backend stores it.
    pub fn encode(&self) -> Encoded<'_> {
        self.0.encode()
    }

    /// Whether `engine` holds the record at the version the write expects.
    pub fn is_current(&self, engine: &Engine) -> bool {
        self.0.is_current(engine)
    }

    /// The embedded store's compare-and-set of this write into `engine`; the version
    /// written, or `None` if the engine holds another version.
    pub fn compare_and_set(self, engine: &Engine, now: Timestamp) -> Option<u64> {
        self.0.compare_and_set(engine, now)
    }

    /// Makes a write the authority made, its last state at `version`, visible in
    /// `engine`.
    pub fn land(self, engine: &Engine, version: u64, now: Timestamp) {
        self.0.land(engine, version, now)
    }

    /// How many states (versions) the write stores: 1 for a delete.
    pub fn steps(&self) -> usize {
        self.0.steps()
    }

    /// The version the write was computed from.
    pub fn expected(&self) -> u64 {
        self.0.expected()
    }

    /// A version the new one must exceed besides `expected`.
    pub fn floor(&self) -> u64 {
        self.0.floor()
    }

    /// Whether the kind's tombstones are compacted (`Aggregate::COMPACTED`).
    pub fn compacted(&self) -> bool {
        self.0.compacted()
    }

    /// What `engine` holds of the record: its version (or its tombstone's, or 0) and
    /// whether it holds the record.
    pub fn held(&self, engine: &Engine) -> (u64, bool) {
        self.0.held(engine)
    }

    /// What a backend that keeps only the latest state stores: per part of the kind,
    /// the last state's value, `None` where the write does not set the part; `None`
    /// for a delete. The intermediate steps are not encoded.
    pub fn last_parts(&self) -> Option<Vec<Option<String>>> {
        self.0.last_parts()
    }
}

/// A write as a backend stores it: per state, oldest first, per part of its kind, the
/// stored value, or "" where the part is not set.
pub struct Encoded<'a> {
    pub kind: &'static str,
    /// "put" or "del".
    pub op: &'static str,
    pub id: &'a str,
    pub expected: u64,
    pub floor: u64,
    /// Whether its tombstone is compacted (`Aggregate::COMPACTED`).
    pub compacted: bool,
    /// The kind's version hash and part hashes, relative to the region's key prefix.
    pub versions: &'static str,
    pub parts: &'static [&'static str],
    /// Empty for a delete.
    pub states: Vec<Vec<String>>,
}

/// What `AnyWrite` needs of a write, whatever its kind.
trait Erased: Send + Sync {
    fn kind(&self) -> &'static str;
    fn region(&self) -> &RegionId;
    fn id(&self) -> &str;
    fn expected(&self) -> u64;
    fn floor(&self) -> u64;
    fn compacted(&self) -> bool;
    fn held(&self, engine: &Engine) -> (u64, bool);
    fn last_parts(&self) -> Option<Vec<Option<String>>>;
    fn steps(&self) -> usize;
    fn encode(&self) -> Encoded<'_>;
    fn is_current(&self, engine: &Engine) -> bool;
    fn compare_and_set(self: Box<Self>, engine: &Engine, now: Timestamp) -> Option<u64>;
    fn land(self: Box<Self>, engine: &Engine, version: u64, now: Timestamp);
}

impl<A: Aggregate> Write<A> {
    /// The states the write stores, oldest first (none for a delete).
    pub fn into_states(self) -> Vec<A> {
        match self.change {
            Change::Put {
                record, mut steps, ..
            } => {
                steps.push(record);
                steps
            }
            Change::Delete => Vec::new(),
        }
    }
}

impl<A: Aggregate> Erased for Write<A> {
    fn kind(&self) -> &'static str {
        A::KIND
    }

    fn region(&self) -> &RegionId {
        &self.region
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn expected(&self) -> u64 {
        self.expected
    }

    fn floor(&self) -> u64 {
        self.floor
    }

    fn compacted(&self) -> bool {
        A::COMPACTED
    }

    fn held(&self, engine: &Engine) -> (u64, bool) {
        A::replica(engine).held(&self.id)
    }

    fn last_parts(&self) -> Option<Vec<Option<String>>> {
        match &self.change {
            Change::Put { record, parts, .. } => Some(
                (0..A::PARTS.len())
                    .map(|i| parts.has(i).then(|| record.encode_part(i)))
                    .collect(),
            ),
            Change::Delete => None,
        }
    }

    fn steps(&self) -> usize {
        match &self.change {
            Change::Put { steps, .. } => steps.len() + 1,
            Change::Delete => 1,
        }
    }

    fn encode(&self) -> Encoded<'_> {
        let (op, states) = match &self.change {
            Change::Put {
                record,
                parts,
                steps,
            } => {
                let encode = |state: &A| {
                    (0..A::PARTS.len())
                        .map(|i| {
                            if parts.has(i) {
                                state.encode_part(i)
                            } else {
                                String::new()
                            }
                        })
                        .collect()
                };
                let states = steps.iter().chain([record]).map(encode).collect();
                ("put", states)
            }
            Change::Delete => ("del", Vec::new()),
        };
        Encoded {
            kind: A::KIND,
            op,
            id: &self.id,
            expected: self.expected,
            floor: self.floor,
            compacted: A::COMPACTED,
            versions: A::VERSIONS,
            parts: A::PARTS,
            states,
        }
    }

    fn is_current(&self, engine: &Engine) -> bool {
        A::replica(engine).version(&self.id) == self.expected
    }

    fn compare_and_set(self: Box<Self>, engine: &Engine, now: Timestamp) -> Option<u64> {
        let (id, expected, floor) = (self.id.clone(), self.expected, self.floor);
        let states = self.into_states();
        let removed = states.is_empty();
        let version = A::replica(engine).compare_and_set(&id, expected, floor, states, now);
        if let (true, Some(version)) = (removed, version) {
            note_removed::<A>(engine, &id, version);
        }
        version
    }

    fn land(self: Box<Self>, engine: &Engine, version: u64, now: Timestamp) {
        let replica = A::replica(engine);
        let id = self.id.clone();
        let states = self.into_states();
        if states.is_empty() {
            if replica.remove(&id, version) {
                note_removed::<A>(engine, &id, version);
            }
        } else {
            // The states were written as the last versions up to `version`.
            let first = version + 1 - states.len() as u64;
            for (k, state) in states.into_iter().enumerate() {
                replica.put(state, first + k as u64, now);
            }
        }
    }
}

/// Each write a group of its own, for a backend whose `Store::commit` is its
/// `commit_group` of one write at a time.
pub fn each_alone<A: Aggregate>(writes: Vec<Write<A>>) -> Vec<Vec<AnyWrite>> {
    writes
        .into_iter()
        .map(|w| vec![AnyWrite::from(w)])
        .collect()
}

/// The answers of groups of one write ([`each_alone`]), one per write.
pub fn alone_answers(groups: Vec<Result<Vec<Committed>>>) -> Vec<Result<Committed>> {
    groups
        .into_iter()
        .map(|group| group.map(|mut one| one.pop().expect("one write, one answer")))
        .collect()
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Written; `version` is the record's (its last step's) version now.
    Written { version: u64 },
    /// The record is no longer at the expected version: read it again and decide again.
    Conflict,
}

/// A record (or its absence) with its version: 0 if never written, else the version of
/// its last write (for an absent record, its delete).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<A> {
    pub record: Option<A>,
    pub version: u64,
}

impl<A> Versioned<A> {
    /// Nothing, never written.
    pub fn none() -> Self {
        Self {
            record: None,
            version: 0,
        }
    }
}

impl<A: Aggregate> Versioned<A> {
    /// What `engine` holds for each of `keys`: the embedded stores' `fetch`, whose
    /// engine holds everything committed.
    pub fn each_in_replica(engine: &Engine, keys: &[(RegionId, String)]) -> Vec<Self> {
        keys.iter()
            .map(|(_, id)| Self::in_replica(engine, id))
            .collect()
    }

    /// What `engine` holds for `id`.
    pub fn in_replica(engine: &Engine, id: &str) -> Self {
        let replica = A::replica(engine);
        match replica.get(id) {
            Some((record, version)) => Self {
                record: Some(record),
                version,
            },
            None => Self {
                record: None,
                version: replica.version(id),
            },
        }
    }
}

/// A stored part: the format it was written in and its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub format: u32,
    pub json: &'a str,
}

impl<'a> Stored<'a> {
    /// Reads a stored value: `<format>:<json>`. A value that is bare JSON was written
    /// before records carried a format (format 0).
    pub fn parse(text: &'a str) -> Result<Self, DecodeError> {
        if text.starts_with('{') || text.starts_with('[') {
            return Ok(Self {
                format: 0,
                json: text,
            });
        }
        let (format, json) = text
            .split_once(':')
            .ok_or_else(|| DecodeError::Corrupt("no format prefix".into()))?;
        let format = format
            .parse()
            .map_err(|_| DecodeError::Corrupt(format!("bad format {format:?}")))?;
        Ok(Self { format, json })
    }

    /// Decodes the JSON of a part whose formats up to `current` all share one shape;
    /// a newer format is refused, to be skipped rather than misread.
    pub fn json<T: DeserializeOwned>(self, current: u32) -> Result<T, DecodeError> {
        if self.format > current {
            return Err(DecodeError::NewerFormat(self.format));
        }
        serde_json::from_str(self.json).map_err(|e| DecodeError::Corrupt(e.to_string()))
    }
}

/// A part as stored: `<format>:<json>`.
pub fn encode<T: Serialize>(format: u32, value: &T) -> String {
    let json = serde_json::to_string(value).expect("domain values serialize");
    format!("{format}:{json}")
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Written by a newer citypark in a format this one does not know: skipped.
    NewerFormat(u32),
    /// A part the change does not carry, and no record to take it from.
    MissingBase,
    /// A kind this version does not know (a newer version wrote it): skipped.
    UnknownKind(String),
    /// Not what any version wrote.
    Corrupt(String),
}

impl DecodeError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::NewerFormat(_) => "newer_format",
            DecodeError::MissingBase => "missing_base",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::Corrupt(_) => "undecodable",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NewerFormat(n) => {
                write!(f, "written in format {n}, newer than this version reads")
            }
            DecodeError::MissingBase => {
                f.write_str("a partial change of a record this instance does not hold")
            }
            DecodeError::UnknownKind(kind) => write!(f, "kind {kind:?} is unknown to this version"),
            DecodeError::Corrupt(e) => write!(f, "undecodable: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_carry_their_format() {
        let text = encode(1, &vec![1, 2]);
        assert_eq!(text, "1:[1,2]");
        let stored = Stored::parse(&text).unwrap();
        assert_eq!(stored.format, 1);
        assert_eq!(stored.json::<Vec<u32>>(1).unwrap(), vec![1, 2]);
        assert_eq!(
            stored.json::<Vec<u32>>(0).unwrap_err(),
            DecodeError::NewerFormat(1)
        );
        let legacy = Stored::parse("{\"a\":1}").unwrap();
        assert_eq!(legacy.format, 0);
        assert!(matches!(Stored::parse("x"), Err(DecodeError::Corrupt(_))));
    }
}
