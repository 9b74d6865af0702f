//! Verify and repair (SPEC G3): compare a mirror replica with its source block by block,
//! and repair only the blocks that differ (one block, one file or the whole database).
//!
//! Both sides must be compared at the same serial while writes go on. The source holds
//! the link at a point: it sets the link's `hold_at` to its current serial (so nothing
//! beyond it is shipped from then on), freezes its store (copy-on-write; the serial of
//! the freeze is at or past the first, and the hold moves up to it), and waits until the
//! replica confirmed exactly that serial. It then reads the replica's checksums through
//! the target's API, compares them with the frozen copy's, and, to repair, sends the
//! source's layout of each affected file with the blocks that differ (replica side:
//! `Store::repair_file`, then a snapshot so a restart keeps the repair). The hold ends
//! when the operation does; writes on the source go on throughout, and the replica then
//! catches up. On a synchronous link, commits wait for the hold (their quorum does).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::links::{self, Apply};
use super::{LinkHandle, Replication};
use crate::node::Error;
use crate::store::block::Block;
use crate::store::file::FileLayout;

/// How long the replica may take to reach the held serial.
const REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Which differing blocks to repair.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairScope {
    /// Only this block file (a name from the checksums, e.g. `orders`).
    #[serde(default)]
    pub file: Option<String>,
    /// Only these block numbers (with `file`).
    #[serde(default)]
    pub blocks: Option<Vec<u32>>,
}

/// One block file's repair, as the source sends it to the target's API.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    pub credential: String,
    pub file: String,
    /// The source's `FileLayout`, postcard then base64.
    #[schemars(regex(pattern = crate::api::openapi::BASE64_PATTERN), extend("contentEncoding" = "base64"))]
    pub layout: String,
    /// Every block number the source's file uses.
    pub used: Vec<u32>,
    /// Block number → the source's bytes, base64.
    pub blocks: Vec<(u32, String)>,
}

type Sums = BTreeMap<String, BTreeMap<u32, u64>>;

/// Ends a hold when the operation ends, however it ends.
struct Hold<'a>(&'a LinkHandle);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.hold_at.store(0, Ordering::SeqCst);
    }
}

/// A link that is not streaming does not bring its replica to a serial: refused. A
/// link paused a moment ago counts as paused although its task has not shown it yet
/// (the pause is in its definition at once, its state once the task sees it).
fn not_streaming(id: &str, handle: &LinkHandle) -> Result<(), Error> {
    let paused = handle.def.lock().paused;
    let status = handle.status.lock();
    let state = if paused {
        links::LinkState::Paused
    } else {
        status.state
    };
    match state {
        links::LinkState::Paused | links::LinkState::Stopped | links::LinkState::Retrying => {
            Err(Error::LinkNotStreaming(format!(
                "link '{id}' is {:?}{}: its replica does not follow; resume it or fix the \
                 error, then try again",
                state,
                status
                    .last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" ({e})"))
            )))
        }
        _ => Ok(()),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The target's checksums from its API (`GET …/databases/{db}/checksums`).
fn target_sums(repl: &Replication, def: &links::LinkDef) -> Result<Sums, Error> {
    let path = format!("/databases/{}/checksums", def.spec.target.database);
    let answer = repl.target_client(def)?.call("GET", &path, None)?;
    let mut out = Sums::new();
    for f in answer["files"].as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or_default().to_string();
        let blocks = out.entry(name).or_default();
        for b in f["blocks"].as_array().into_iter().flatten() {
            let (Some(n), Some(sum)) = (
                b["block"].as_u64(),
                b["checksum"]
                    .as_str()
                    .and_then(|h| u64::from_str_radix(h, 16).ok()),
            ) else {
                return Err(Error::Unavailable(
                    "the target's checksums are unreadable".into(),
                ));
            };
            blocks.insert(n as u32, sum);
        }
    }
    Ok(out)
}

/// Blocks that differ, per file: different bytes, or present on one side only.
fn differing(source: &Sums, target: &Sums) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    let names: BTreeSet<&String> = source.keys().chain(target.keys()).collect();
    let empty = BTreeMap::new();
    for name in names {
        let (s, t) = (
            source.get(name).unwrap_or(&empty),
            target.get(name).unwrap_or(&empty),
        );
        let numbers: BTreeSet<&u32> = s.keys().chain(t.keys()).collect();
        let diff: Vec<u32> = numbers
            .into_iter()
            .filter(|n| s.get(n) != t.get(n))
            .copied()
            .collect();
        if !diff.is_empty() {
            out.insert(name.clone(), diff);
        }
    }
    out
}

/// A verification: how the replica's blocks compare with the source's.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// No block differs.
    pub identical: bool,
    pub differing_blocks: usize,
    pub files: Vec<FileReport>,
    /// The serial both sides were compared at (absent in a repair's `after`: the same
    /// as its `serial`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// How long the verification took (a verification alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

/// One block file of a [`Report`].
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FileReport {
    pub file: String,
    /// The blocks the source's file uses.
    pub blocks: usize,
    /// The numbers of the blocks that differ.
    pub differing: Vec<u32>,
}

/// A repair: the verification before, what was repaired, and the verification after.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Repair {
    pub serial: u64,
    pub before: Report,
    pub repaired_blocks: usize,
    pub after: Report,
    pub took_ms: u64,
}

/// What [`Replication::verify`] answers: a report, or with a scope a repair.
#[derive(Debug)]
pub enum Verified {
    Report(Report),
    Repair(Repair),
}

/// A replica's block file repaired (`POST …/replicas/{link}/repair`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Replaced {
    pub file: String,
    /// The blocks replaced.
    pub replaced: usize,
}

fn report(source: &Sums, diff: &BTreeMap<String, Vec<u32>>) -> Report {
    Report {
        identical: diff.is_empty(),
        differing_blocks: diff.values().map(Vec::len).sum(),
        files: source
            .iter()
            .map(|(name, blocks)| FileReport {
                file: name.clone(),
                blocks: blocks.len(),
                differing: diff.get(name).cloned().unwrap_or_default(),
            })
            .collect(),
        serial: None,
        took_ms: None,
    }
}

impl Replication {
    /// Verify mirror link `id` (blocking: it waits for the replica and calls its API);
    /// with `repair`, repair the differing blocks it selects and verify again.
    pub fn verify(
        &self,
        tenant: &str,
        id: &str,
        repair: Option<RepairScope>,
    ) -> Result<Verified, Error> {
        let started = Instant::now();
        let handle = self.handle(tenant, id)?;
        let def = handle.def.lock().clone();
        if def.spec.options.apply != Apply::Mirror {
            return Err(Error::Invalid(
                "verify compares blocks, and a logical replica's blocks are its own; only a \
                 mirror link can be verified"
                    .into(),
            ));
        }
        not_streaming(id, &handle)?;
        let db = self.node.database(tenant, &def.spec.database)?;
        // Hold first at a serial nothing has been shipped past, then at the freeze's.
        handle
            .hold_at
            .store(db.serials().0.max(1), Ordering::SeqCst);
        let _hold = Hold(&handle);
        let (frozen, serial, _) = db.freeze();
        handle.hold_at.store(serial.max(1), Ordering::SeqCst);
        let deadline = Instant::now() + REACH_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        while handle.status.lock().acked_serial < serial {
            not_streaming(id, &handle)?;
            if Instant::now() > deadline {
                let status = handle.status.lock().clone();
                return Err(Error::Unavailable(format!(
                    "the replica did not reach serial {serial} within {} s (it confirmed {}; \
                     link {:?}{})",
                    REACH_TIMEOUT.as_secs(),
                    status.acked_serial,
                    status.state,
                    status
                        .last_error
                        .map_or(String::new(), |e| format!(": {e}"))
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        let source: Sums = frozen
            .checksums()
            .into_iter()
            .map(|(name, blocks)| (name, blocks.into_iter().collect()))
            .collect();
        let diff = differing(&source, &target_sums(self, &def)?);
        let mut out = report(&source, &diff);
        out.serial = Some(serial);
        let Some(scope) = repair else {
            out.took_ms = Some(started.elapsed().as_millis() as u64);
            return Ok(Verified::Report(out));
        };
        // Repair what the scope selects of what differs.
        if scope.blocks.is_some() && scope.file.is_none() {
            return Err(Error::Invalid(
                "repairing blocks needs their \"file\"".into(),
            ));
        }
        let names = frozen.schema().block_file_names();
        let mut repaired = 0;
        for (name, blocks) in &diff {
            if scope.file.as_ref().is_some_and(|f| f != name) {
                continue;
            }
            let chosen: Vec<u32> = match &scope.blocks {
                Some(only) => blocks
                    .iter()
                    .filter(|n| only.contains(n))
                    .copied()
                    .collect(),
                None => blocks.clone(),
            };
            if chosen.is_empty() {
                continue;
            }
            let index = names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::NotFound(format!("block file '{name}'")))?;
            let file = &frozen.files()[index];
            let layout = postcard::to_allocvec(&file.layout())
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            let req = RepairRequest {
                credential: def.credential.clone(),
                file: name.clone(),
                layout: b64().encode(layout),
                used: file.blocks().map(|(n, _)| n).collect(),
                blocks: chosen
                    .iter()
                    .filter_map(|n| file.block(*n).map(|b| (*n, b64().encode(b.as_bytes()))))
                    .collect(),
            };
            self.target_client(&def)?
                .send("POST", &format!("/replicas/{id}/repair"), &req)?;
            repaired += chosen.len();
        }
        let after = differing(&source, &target_sums(self, &def)?);
        tracing::info!(link = %id, serial, repaired, left = after.values().map(Vec::len).sum::<usize>(), "replica repaired");
        Ok(Verified::Repair(Repair {
            serial,
            before: out,
            repaired_blocks: repaired,
            after: report(&source, &after),
            took_ms: started.elapsed().as_millis() as u64,
        }))
    }

    /// The target side: repair one block file of the mirror replica of link `id`.
    pub async fn apply_repair(
        &self,
        tenant: &str,
        id: &str,
        req: RepairRequest,
    ) -> Result<Replaced, Error> {
        let reg = self.authenticated_replica(tenant, id, &req.credential)?;
        if reg.apply != Apply::Mirror {
            return Err(Error::Invalid("only a mirror replica is repaired".into()));
        }
        let malformed = |what: &str, e: String| Error::Malformed(format!("{what}: {e}"));
        let layout: FileLayout = postcard::from_bytes(
            &b64()
                .decode(&req.layout)
                .map_err(|e| malformed("layout", e.to_string()))?,
        )
        .map_err(|e| malformed("layout", e.to_string()))?;
        let mut blocks = Vec::with_capacity(req.blocks.len());
        for (n, bytes) in &req.blocks {
            let bytes = b64()
                .decode(bytes)
                .map_err(|e| malformed("block", e.to_string()))?;
            let block = Block::from_bytes(&bytes)
                .ok_or_else(|| Error::Malformed(format!("block {n} is not a valid block")))?;
            blocks.push((*n, block));
        }
        let db = self.node.database(tenant, &reg.database)?;
        let replaced = db
            .repair_blocks(&req.file, layout, &req.used, blocks)
            .await?;
        Ok(Replaced {
            file: req.file,
            replaced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(v: &[(&str, &[(u32, u64)])]) -> Sums {
        v.iter()
            .map(|(n, b)| (n.to_string(), b.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn blocks_that_differ_or_exist_on_one_side_only_are_found_per_file() {
        let source = sums(&[("orders", &[(0, 1), (1, 2), (2, 3)]), ("lines", &[(0, 9)])]);
        let target = sums(&[("orders", &[(0, 1), (1, 7), (5, 3)]), ("lines", &[(0, 9)])]);
        let diff = differing(&source, &target);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff["orders"], vec![1, 2, 5]);
        assert!(differing(&source, &source).is_empty());
        let r = report(&source, &diff);
        assert!(!r.identical);
        assert_eq!(r.differing_blocks, 3);
    }
}
