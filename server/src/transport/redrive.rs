//! Re-driving dead letters: a record a logical link's stages quarantined, as it was or
//! as an operator edited it, runs through the link's stages again and, if they pass it,
//! is applied on the replica as a transaction of its own (on a PostgreSQL target, by
//! this node straight into PostgreSQL: `transport::postgres::redrive`).
//!
//! The source stages the record, then hands the staged operations to the target's API
//! (`POST /v1/tenants/{t}/replicas/{link}/redrive`), authenticated like the replica's
//! registration and carrying the link's credential, which the target checks as the
//! handshake does. The replica applies them without moving its position in the source's
//! stream, so the link goes on where it was. The dead letter goes once the replica has
//! applied it (or the stages filtered it out). Like re-publishing from a Kafka dead
//! letter queue, the record is applied as given: if the source changed the record since,
//! the operator decides which version the replica keeps.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use doppel_sdk::abi::{BatchBuilder, Op as RecordOp, OwnedRecord};

use super::links::Apply;
use super::{logical, Replication};
use crate::node::Error;

/// Why a re-drive did not happen.
#[derive(Debug)]
pub enum RedriveError {
    Node(Error),
    /// The link's stages reject the record (again).
    Rejected(String),
}

impl From<Error> for RedriveError {
    fn from(e: Error) -> Self {
        RedriveError::Node(e)
    }
}

/// What the source sends the target's API.
#[derive(Debug, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub credential: String,
    /// The staged operations (`transport::logical::ops_bytes`), base64.
    #[schemars(regex(pattern = crate::api::openapi::BASE64_PATTERN), extend("contentEncoding" = "base64"))]
    pub ops: String,
}

/// A dead letter re-driven (`POST …/dead-letters/{id}/redrive`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Redriven {
    /// The dead letter's id (it is dropped).
    pub id: u64,
    /// `applied` on the replica, or `filtered` out by the stages.
    pub outcome: String,
    /// The record as it went through the stages.
    #[schemars(with = "logical::ShownRecord")]
    pub record: Value,
}

/// Re-driven operations applied on a logical replica (`POST …/replicas/{link}/redrive`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct AppliedRedrive {
    /// The operations applied.
    pub applied: usize,
    pub database: String,
}

/// A dead letter's record as an operator may edit it: the schema of a re-drive's
/// `record` (what [`record_from_json`] reads).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct EditedRecord {
    op: EditedOp,
    #[schemars(length(min = 1))]
    file: String,
    #[schemars(length(min = 1, max = 1024))]
    key: String,
    /// Alternate keys by name.
    #[serde(default)]
    alt: Option<std::collections::BTreeMap<String, String>>,
    /// The record's data (needed but for a delete).
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    serial: Option<u64>,
    #[serde(default)]
    txn: Option<u64>,
}

#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum EditedOp {
    Insert,
    Update,
    Delete,
}

/// Why a record does not read back: it does not parse as an [`EditedRecord`]
/// (`Malformed`), or it lacks the data its operation needs (`Invalid`).
fn record_from_json(v: &Value, origin: u64) -> Result<OwnedRecord, Error> {
    let malformed = |m: String| Error::Malformed(m);
    let text = |k: &str| -> Result<String, Error> {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| malformed(format!("the record needs \"{k}\" as a string")))
    };
    let op = RecordOp::from_name(&text("op")?)
        .filter(|op| *op != RecordOp::Read)
        .ok_or_else(|| malformed("\"op\" is insert, update or delete".into()))?;
    let alt = match &v["alt"] {
        Value::Null => Vec::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| malformed(format!("alternate key '{k}' is not a string")))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(malformed("\"alt\" is an object of strings".into())),
    };
    let data = match (&v["data"], op) {
        (_, RecordOp::Delete) => Vec::new(),
        (Value::Null, _) => {
            return Err(Error::Invalid(format!(
                "the record needs \"data\" to {}",
                op.name()
            )))
        }
        (d, _) => serde_json::to_vec(d).map_err(|e| malformed(e.to_string()))?,
    };
    Ok(OwnedRecord {
        op,
        origin,
        serial: v["serial"].as_u64().unwrap_or(0),
        timestamp: crate::txn::clock::next_us(),
        txn: v["txn"].as_u64().unwrap_or(0),
        file: text("file")?,
        key: text("key")?,
        data,
        before: None,
        alt,
    })
}

impl Replication {
    /// Re-drive dead letter `seq` of link `id` (blocking: it calls the target's API).
    /// `record` replaces the stored record (an operator's edit).
    pub fn redrive(
        &self,
        tenant: &str,
        id: &str,
        seq: u64,
        record: Option<Value>,
    ) -> Result<Redriven, RedriveError> {
        let handle = self.handle(tenant, id)?;
        let def = handle.def.lock().clone();
        let letter = self
            .dead_letters
            .get(id, seq)
            .map_err(Error::Log)?
            .ok_or_else(|| Error::NotFound(format!("dead letter {seq} of link '{id}'")))?;
        if def.spec.options.apply != Apply::Logical
            || letter.outcome == "shipped without this record's interrelation"
        {
            return Err(Error::AlreadyExists(format!(
                "dead letter {seq} was shipped to the replica already (an interrelation \
                 rule failed on it); there is nothing to re-drive: drop it"
            ))
            .into());
        }
        let record = record.unwrap_or(letter.record);
        let record = record_from_json(&record, self.origin())?;
        let mut stages = logical::stages(&self.plugins, tenant, &def.spec.options.stages)
            // They loaded when the link was made: what fails now is the registry.
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut input = BatchBuilder::new();
        input.push(&record);
        let output = if stages.chain.stages.is_empty() {
            input
        } else {
            let out = stages
                .chain
                .run(input)
                .map_err(|e| RedriveError::Rejected(format!("stage {}: {e}", e.plugin())))?;
            if let Some(e) = out.errors.first() {
                return Err(RedriveError::Rejected(format!(
                    "stage {} rejects it: {}",
                    e.plugin, e.message
                )));
            }
            out.batch
        };
        let ops = logical::ops_bytes(&output)?;
        let outcome = if ops.is_empty() {
            "filtered"
        } else if def.postgres_url.is_some() {
            // The applier is this node: straight into PostgreSQL.
            tokio::runtime::Handle::current().block_on(super::postgres::redrive(&def, &ops))?;
            "applied"
        } else {
            let body = RedriveRequest {
                credential: def.credential.clone(),
                ops: base64::engine::general_purpose::STANDARD.encode(&ops),
            };
            match self.target_client(&def).map_err(Error::from)?.send(
                "POST",
                &format!("/replicas/{id}/redrive"),
                &body,
            ) {
                Ok(_) => {}
                // The replica refuses what the stages made of the record (a file it
                // does not have, say): the record is what to change.
                Err(crate::remote::RemoteError::Refused {
                    status: 400 | 422,
                    detail,
                    ..
                }) => {
                    return Err(RedriveError::Rejected(format!(
                        "the replica refuses it: {detail}"
                    )))
                }
                Err(e) => return Err(Error::from(e).into()),
            }
            "applied"
        };
        self.drop_dead_letter(tenant, id, seq)?;
        tracing::info!(link = %id, dead_letter = seq, outcome, "dead letter re-driven");
        Ok(Redriven {
            id: seq,
            outcome: outcome.to_string(),
            record: logical::record_json(&record),
        })
    }

    /// The target side: apply re-driven operations on the replica of link `id`.
    pub fn apply_redrive(
        &self,
        tenant: &str,
        id: &str,
        req: RedriveRequest,
    ) -> Result<AppliedRedrive, Error> {
        let reg = self.authenticated_replica(tenant, id, &req.credential)?;
        if reg.apply != Apply::Logical {
            return Err(Error::Invalid(
                "only a logical replica takes re-driven records".into(),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&req.ops)
            .map_err(|e| Error::Malformed(format!("ops: not base64: {e}")))?;
        let db = self.node.database(tenant, &reg.database)?;
        let ops = logical::decode_ops(&db.schema(), &bytes)?;
        let n = ops.len();
        db.apply_redriven(ops)?;
        Ok(AppliedRedrive {
            applied: n,
            database: reg.database,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dead_letters_record_reads_back_as_it_was_shown() {
        let mut r = OwnedRecord::new(RecordOp::Update, "orders", "o-1", r#"{"a":1}"#);
        r.alt = vec![("customer".into(), "ann".into())];
        r.serial = 7;
        r.txn = 3;
        let back = record_from_json(&logical::record_json(&r), 9).unwrap();
        assert_eq!(
            (
                back.op,
                back.file.as_str(),
                back.key.as_str(),
                back.serial,
                back.txn,
                back.origin
            ),
            (RecordOp::Update, "orders", "o-1", 7, 3, 9)
        );
        assert_eq!(back.alt, r.alt);
        assert_eq!(
            serde_json::from_slice::<Value>(&back.data).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn an_edited_record_that_is_not_a_record_is_refused_precisely() {
        let cases = [
            (json!({"file": "f", "key": "k", "data": 1}), "\"op\""),
            (
                json!({"op": "read", "file": "f", "key": "k", "data": 1}),
                "insert, update or delete",
            ),
            (json!({"op": "insert", "key": "k", "data": 1}), "\"file\""),
            (json!({"op": "insert", "file": "f", "key": "k"}), "\"data\""),
            (
                json!({"op": "insert", "file": "f", "key": "k", "data": 1, "alt": {"c": 1}}),
                "'c'",
            ),
        ];
        for (v, want) in cases {
            let err = record_from_json(&v, 0).unwrap_err();
            assert!(err.to_string().contains(want), "{v}: {err}");
        }
        let del = record_from_json(&json!({"op": "delete", "file": "f", "key": "k"}), 0).unwrap();
        assert!(del.data.is_empty());
    }
}
