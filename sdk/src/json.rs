//! JSON helpers for record data: parse, read and edit fields by dotted path.

use serde_json::Value;

/// Parses record data; empty bytes are `null`.
pub fn parse(data: &[u8]) -> Result<Value, String> {
    if data.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(data).map_err(|e| format!("data is not JSON: {e}"))
}

/// Serialises a value back to record data.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Checks that `path` is a dotted field path: non-empty segments separated by dots.
/// For config validation; `what` names the config field in the message.
pub fn check_path(what: &str, path: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("{what}: '{path}' is not a dotted field path"));
    }
    Ok(())
}

/// The value at a dotted path (`customer.address.city`).
pub fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

/// The value at a dotted path, mutably.
pub fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(v, |v, seg| v.get_mut(seg))
}

/// Replaces the value at a dotted path if it exists; says whether it did.
pub fn replace(v: &mut Value, path: &str, with: Value) -> bool {
    match get_mut(v, path) {
        Some(slot) => {
            *slot = with;
            true
        }
        None => false,
    }
}

/// Removes the field at a dotted path; returns it.
pub fn remove(v: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (get_mut(v, p)?, l),
        None => (v, path),
    };
    parent.as_object_mut()?.remove(last)
}

/// Sets the value at a dotted path, creating the objects on the way; fails (returning
/// the value) when a segment on the way is not an object.
pub fn insert(v: &mut Value, path: &str, with: Value) -> Result<(), Value> {
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut cur = v;
    for seg in parents.into_iter().flat_map(|p| p.split('.')) {
        let Some(obj) = cur.as_object_mut() else {
            return Err(with);
        };
        cur = obj
            .entry(seg.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    match cur.as_object_mut() {
        Some(obj) => {
            obj.insert(last.to_owned(), with);
            Ok(())
        }
        None => Err(with),
    }
}

/// Renames a top-level field; says whether it was there.
pub fn rename(v: &mut Value, from: &str, to: &str) -> bool {
    let Some(obj) = v.as_object_mut() else {
        return false;
    };
    match obj.remove(from) {
        Some(x) => {
            obj.insert(to.to_owned(), x);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_reach_nested_fields() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": 3});
        assert_eq!(get(&v, "a.b"), Some(&json!(1)));
        assert!(replace(&mut v, "a.c", json!("x")));
        assert_eq!(remove(&mut v, "d"), Some(json!(3)));
        assert!(rename(&mut v, "a", "z"));
        assert_eq!(v, json!({"z": {"b": 1, "c": "x"}}));
        assert!(!replace(&mut v, "nope.x", json!(0)));
        assert!(check_path("p", "a.b").is_ok());
        assert_eq!(
            check_path("p", "a..b"),
            Err("p: 'a..b' is not a dotted field path".to_owned())
        );
    }

    #[test]
    fn insert_creates_the_way_and_refuses_to_go_through_a_scalar() {
        let mut v = json!({"s": "x"});
        assert_eq!(insert(&mut v, "n.m.a", json!(1)), Ok(()));
        assert_eq!(insert(&mut v, "s.c", json!(2)), Err(json!(2)));
        assert_eq!(v, json!({"n": {"m": {"a": 1}}, "s": "x"}));
    }
}
