//! Records as clients see them: JSON in, encoded block records out, and back.
//!
//! A client record is a unique key, named alternate keys and any JSON data. The store
//! keeps the data as compact JSON text and the alternate keys by their index in the
//! file's schema. This module owns that translation and its validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{Error, Result};
use crate::log::OpKind;
use crate::store::{
    encode_record, FileSchema, Placement, RecordRef, Schema, Store, StoreError, MAX_KEY_BYTES,
};
use crate::txn::Op;

/// One operation of a transaction, as the client sends it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpInput {
    pub op: OpName,
    pub file: String,
    /// 1 to 1024 bytes.
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    #[serde(default)]
    pub alt: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

impl OpInput {
    /// The operation as [`resolve`] and the quotas read it, borrowed from this one.
    pub fn as_ref(&self) -> OpRef<'_> {
        OpRef {
            op: self.op,
            file: &self.file,
            key: &self.key,
            alt: self
                .alt
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect(),
            data: self.data.as_deref().map(RawValue::get),
        }
    }
}

/// One operation of a transaction, borrowed from the request that carries it: a JSON
/// body's [`OpInput`], or a binary batch's bytes read in place (`api::batch`), so a
/// batch of thousands costs no allocation per operation before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRef<'a> {
    pub op: OpName,
    pub file: &'a str,
    pub key: &'a str,
    /// Alternate keys by name, each name once (empty: no allocation).
    pub alt: Vec<(&'a str, &'a str)>,
    /// The record's data as one JSON value's text; `None` stores `null`.
    pub data: Option<&'a str>,
}

impl OpRef<'_> {
    /// The bytes a byte-rate quota charges it: its key, alternate keys and data.
    pub fn written_bytes(&self) -> u64 {
        let alt: usize = self.alt.iter().map(|(_, value)| value.len()).sum();
        let data = self.data.map_or(0, str::len);
        (self.key.len() + alt + data) as u64
    }
}

/// The operation names clients use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpName {
    Insert,
    Update,
    Upsert,
    Delete,
}

impl From<OpName> for OpKind {
    fn from(op: OpName) -> OpKind {
        match op {
            OpName::Insert => OpKind::Insert,
            OpName::Update => OpKind::Update,
            OpName::Upsert => OpKind::Upsert,
            OpName::Delete => OpKind::Delete,
        }
    }
}

impl From<OpKind> for OpName {
    fn from(op: OpKind) -> OpName {
        match op {
            OpKind::Insert => OpName::Insert,
            OpKind::Update => OpName::Update,
            OpKind::Upsert => OpName::Upsert,
            OpKind::Delete => OpName::Delete,
        }
    }
}

/// A record as clients read it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RecordView {
    pub key: String,
    pub alt: BTreeMap<String, String>,
    pub data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// Turn a stored record into its client view.
pub fn view(file: &FileSchema, record: &RecordRef<'_>) -> RecordView {
    let alt = record
        .alts()
        .filter_map(|(index, value)| {
            let name = file.alt_keys.get(index as usize)?;
            Some((name.clone(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect();
    let data = std::str::from_utf8(record.data)
        .ok()
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .unwrap_or_else(null);
    RecordView {
        key: String::from_utf8_lossy(record.key).into_owned(),
        alt,
        data,
        block: None,
        offset: None,
    }
}

/// The client view of a record read from the store, with where it sits.
pub fn placed_view(file: &FileSchema, placement: Placement, record: &RecordRef<'_>) -> RecordView {
    RecordView {
        block: Some(placement.block),
        offset: Some(placement.offset),
        ..view(file, record)
    }
}

/// Resolve a client operation against the schema: file id, alt indexes, encoding.
pub fn resolve(schema: &Schema, input: &OpRef<'_>) -> Result<Op> {
    let table = schema
        .file_index(input.file)
        .ok_or_else(|| Error::NotFound(format!("file '{}'", input.file)))?;
    let file = schema.main_id(table);
    Store::check_key(input.key.as_bytes())?;
    let kind = OpKind::from(input.op);
    if kind == OpKind::Delete {
        return Ok(Op {
            kind,
            file,
            payload: input.key.as_bytes().to_vec(),
        });
    }
    let payload = encode(
        &schema.files[table],
        input.key,
        input.alt.iter().copied(),
        input.data,
    )?;
    Ok(Op {
        kind,
        file,
        payload,
    })
}

/// Encode a record for `file`, checking its alternate-key names; `data` is one JSON
/// value's text (`None`: `null`).
pub fn encode<'a>(
    file: &FileSchema,
    key: &str,
    alt: impl IntoIterator<Item = (&'a str, &'a str)>,
    data: Option<&str>,
) -> Result<Vec<u8>> {
    let mut alts: Vec<(u8, &[u8])> = Vec::new();
    for (name, value) in alt {
        let index = file
            .alt_keys
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "file '{}' has no alternate key '{name}'",
                    file.name
                ))
            })?;
        if value.len() > MAX_KEY_BYTES {
            return Err(StoreError::KeyTooLong {
                len: value.len(),
                max: MAX_KEY_BYTES,
            }
            .into());
        }
        if !value.is_empty() {
            alts.push((index as u8, value.as_bytes()));
        }
    }
    alts.sort_unstable_by_key(|(index, _)| *index);
    if let Some(pair) = alts.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Invalid(format!(
            "alternate key '{}' is given twice",
            file.alt_keys[pair[0].0 as usize]
        )));
    }
    Store::check_key(key.as_bytes())?;
    let data = data.unwrap_or("null");
    let mut out = Vec::new();
    encode_record(&mut out, key.as_bytes(), &alts, data.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileSchema;

    fn file() -> FileSchema {
        FileSchema {
            name: "items".into(),
            alt_keys: vec!["sku".into(), "colour".into()],
        }
    }

    #[test]
    fn an_alternate_key_named_twice_is_refused_not_encoded_twice() {
        let err = encode(&file(), "k", [("sku", "a"), ("sku", "b")], None).unwrap_err();
        assert!(
            err.to_string()
                .contains("alternate key 'sku' is given twice"),
            "{err}"
        );
        let ok = encode(&file(), "k", [("colour", "red"), ("sku", "a")], Some("1")).unwrap();
        let record = crate::store::block::decode(&ok).unwrap();
        assert_eq!(record.alt(0), Some(&b"a"[..]));
        assert_eq!(record.alt(1), Some(&b"red"[..]));
        assert_eq!(record.data, b"1");
    }
}
