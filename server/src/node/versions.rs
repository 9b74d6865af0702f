//! Record versions of mutual databases (SPEC F4): which write of which node a record's
//! current contents are, kept so concurrent writes on two sites can be told apart from
//! one that follows another.
//!
//! A database created with `"mutual": true` has one more file, [`VERSIONS_FILE`], which
//! clients can read but not write. Each record of every other file has one entry in it,
//! keyed `{file}/{key}`, holding a [`Stamp`]:
//! * the record's version: a hybrid-logical-clock timestamp (`txn::clock`: microseconds,
//!   strictly increasing on the node, and raised past every remote version the node
//!   applies) and the id of the node that wrote it (`origin`);
//! * the version it replaced on that node (`base`), so a receiving site sees whether the
//!   write followed the version it holds (no conflict) or was concurrent with it;
//! * whether the write was a delete: the entry stays as a tombstone, so a late update
//!   cannot bring a deleted record back unless it wins.
//!
//! [`stamp`] adds the entries to a local transaction's operations under the database's
//! writer lock, so the version is written in the same transaction, logged, snapshotted,
//! restored and mirrored like any record.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::log::OpKind;
use crate::store::{block, encode_record, FileSchema, Schema, Store, MAX_KEY_BYTES};
use crate::txn::{clock, Op};

/// The hidden file of a mutual database that holds its record versions.
pub const VERSIONS_FILE: &str = "__versions";

/// File names starting with this are Doppel's own.
pub const RESERVED_PREFIX: &str = "__";

/// The origin number of a node id (the first 32 bits of its xxh3): what the node's
/// writes carry. Each node holds its own (`Node::origin`, set from its id when
/// replication starts), so several nodes can share a process (the simulation).
pub fn origin_of(node_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(node_id.as_bytes()) & 0xFFFF_FFFF
}

/// One write: when (hybrid logical clock) and where. Ordered by time, then origin:
/// the last-writer-wins order every site agrees on. All zero: no version (a record
/// never written).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Version {
    pub t: u64,
    pub o: u64,
}

impl Version {
    pub fn is_none(&self) -> bool {
        *self == Version::default()
    }
}

/// A record's version entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub t: u64,
    pub o: u64,
    /// The version this write replaced where it was made.
    #[serde(default)]
    pub bt: u64,
    #[serde(default)]
    pub bo: u64,
    /// The write deleted the record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub del: bool,
}

impl Stamp {
    pub fn version(&self) -> Version {
        Version {
            t: self.t,
            o: self.o,
        }
    }

    pub fn base(&self) -> Version {
        Version {
            t: self.bt,
            o: self.bo,
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a stamp serialises")
    }

    pub fn decode(data: &[u8]) -> Option<Stamp> {
        serde_json::from_slice(data).ok()
    }
}

/// The schema a database's spec declares, with the versions file for a mutual one.
pub fn schema(files: &[FileSchema], mutual: bool) -> Schema {
    let mut files = files.to_vec();
    if mutual {
        files.push(FileSchema {
            name: VERSIONS_FILE.into(),
            alt_keys: Vec::new(),
        });
    }
    Schema { files }
}

/// The versions file's id in `schema`, if it has one.
pub fn versions_id(schema: &Schema) -> Option<u32> {
    schema.file_index(VERSIONS_FILE).map(|t| schema.main_id(t))
}

/// The versions file's key of record `key` of file `file`.
pub fn entry_key(file: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() + 1 + key.len());
    out.extend_from_slice(file.as_bytes());
    out.push(b'/');
    out.extend_from_slice(key);
    out
}

/// The (file, key) a versions-file key names.
pub fn split_entry_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let slash = key.iter().position(|b| *b == b'/')?;
    Some((std::str::from_utf8(&key[..slash]).ok()?, &key[slash + 1..]))
}

/// The stamp of record `key` of file `file`, if it was ever written here.
pub fn current(store: &Store, versions: u32, file: &str, key: &[u8]) -> Option<Stamp> {
    let (_, r) = store.get(versions, &entry_key(file, key))?;
    Stamp::decode(r.data)
}

/// The operation that sets a record's stamp.
pub fn stamp_op(versions: u32, file: &str, key: &[u8], stamp: &Stamp) -> Result<Op> {
    let entry = entry_key(file, key);
    if entry.len() > MAX_KEY_BYTES {
        return Err(Error::Invalid(format!(
            "key of {} bytes: in a mutual database a key and its file's name take at most \
             {} bytes together",
            key.len(),
            MAX_KEY_BYTES - 1
        )));
    }
    let mut payload = Vec::new();
    encode_record(&mut payload, &entry, &[], &stamp.encode());
    Ok(Op {
        kind: OpKind::Upsert,
        file: versions,
        payload,
    })
}

/// A local transaction's operations with a new version after each write: stamped now,
/// by this node (`origin`), on the version each record holds (or the one an earlier
/// operation of the same transaction gave it).
///
/// The time comes from `txn::clock`, which is the process's: nodes sharing a process
/// (the simulation) share one monotonic clock, a valid execution of the hybrid logical
/// clock (perfectly synchronised clocks); the origin tells their writes apart.
pub fn stamp(store: &Store, ops: Vec<Op>, origin: u64) -> Result<Vec<Op>> {
    let schema = store.schema();
    let Some(versions) = versions_id(schema) else {
        return Ok(ops);
    };
    let mut within: HashMap<(u32, Vec<u8>), Version> = HashMap::new();
    let mut out = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        if op.file == versions {
            return Err(Error::Invalid(format!(
                "file '{VERSIONS_FILE}' holds the record versions of mutual replication; \
                 it takes no writes"
            )));
        }
        let Some(table) = schema.table_of(op.file) else {
            out.push(op);
            continue;
        };
        let name = &schema.files[table].name;
        let (file, key) = (op.file, op.key().to_vec());
        let deleted = op.kind == OpKind::Delete;
        out.push(op);
        let base = match within.get(&(file, key.clone())) {
            Some(v) => *v,
            None => {
                current(store, versions, name, &key).map_or(Version::default(), |s| s.version())
            }
        };
        let now = Stamp {
            t: clock::next_us(),
            o: origin,
            bt: base.t,
            bo: base.o,
            del: deleted,
        };
        out.push(stamp_op(versions, name, &key, &now)?);
        within.insert((file, key), now.version());
    }
    Ok(out)
}

/// The stamps a transaction's A log wrote, by (file, key): what a mutual link ships
/// with each record.
pub fn stamps_of(
    schema: &Schema,
    entries: &[crate::log::EntryRef<'_>],
) -> HashMap<(String, Vec<u8>), Stamp> {
    let mut out = HashMap::new();
    let Some(versions) = versions_id(schema) else {
        return out;
    };
    for e in entries {
        if e.header.file != versions || e.header.undo {
            continue;
        }
        let Some(image) = e.image else { continue };
        let Some(r) = block::decode(image) else {
            continue;
        };
        let (Some((file, key)), Some(stamp)) = (split_entry_key(r.key), Stamp::decode(r.data))
        else {
            continue;
        };
        out.insert((file.to_string(), key.to_vec()), stamp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_versions_order_by_time_then_origin() {
        let s = Stamp {
            t: 5,
            o: 9,
            bt: 4,
            bo: 1,
            del: true,
        };
        assert_eq!(Stamp::decode(&s.encode()), Some(s));
        assert!(Version { t: 5, o: 1 } > Version { t: 4, o: 9 });
        assert!(Version { t: 5, o: 2 } > Version { t: 5, o: 1 });
        assert_eq!(
            split_entry_key(&entry_key("orders", b"a/b")),
            Some(("orders", &b"a/b"[..]))
        );
    }

    #[test]
    fn a_local_write_is_stamped_on_the_version_it_replaces() {
        let mut store = Store::new(
            schema(
                &[FileSchema {
                    name: "f".into(),
                    alt_keys: vec![],
                }],
                true,
            ),
            4096,
            1 << 20,
        );
        let put = |data: &str| {
            let mut payload = Vec::new();
            encode_record(&mut payload, b"k", &[], data.as_bytes());
            Op {
                kind: OpKind::Upsert,
                file: 0,
                payload,
            }
        };
        let mut seq = crate::txn::Sequencer::new(0, 1);
        let ops = stamp(&store, vec![put("1"), put("2")], 7).unwrap();
        assert_eq!(ops.len(), 4);
        crate::txn::apply(&mut store, &mut seq, 1, ops).unwrap();
        let first = current(&store, 1, "f", b"k").unwrap();
        assert_eq!(first.o, 7);
        assert!(first.base().t > 0, "the second put follows the first");
        let ops = stamp(&store, vec![put("3")], 7).unwrap();
        crate::txn::apply(&mut store, &mut seq, 2, ops).unwrap();
        let second = current(&store, 1, "f", b"k").unwrap();
        assert_eq!(second.base(), first.version());
        assert!(second.version() > first.version());
        let refused = stamp(
            &store,
            vec![Op {
                file: 1,
                ..put("x")
            }],
            7,
        )
        .unwrap_err();
        assert!(refused.to_string().contains("takes no writes"), "{refused}");
    }
}
