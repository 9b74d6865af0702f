//! Per-source rules in a configuration. A record carries its origin node as a number;
//! a configuration names a source either by that number (`"7"`) or by a name it declares
//! in a `nodes` table (`{"nodes": {"tokyo": 7}, "sources": {"tokyo": …}}`). This module
//! turns such a `sources` map into one keyed by node id, once, when the config loads.

use std::collections::{BTreeMap, HashMap};

/// The node id a source name stands for: a name from `nodes`, or a decimal node id.
pub fn resolve(name: &str, nodes: &BTreeMap<String, u64>) -> Result<u64, String> {
    if let Some(id) = nodes.get(name) {
        return Ok(*id);
    }
    name.parse::<u64>().map_err(|_| {
        format!("source '{name}' is neither a node id nor a name declared in \"nodes\"")
    })
}

/// Re-keys `sources` by node id. Two entries naming the same node are an error.
pub fn by_node<T>(
    sources: BTreeMap<String, T>,
    nodes: &BTreeMap<String, u64>,
) -> Result<HashMap<u64, T>, String> {
    let mut out = HashMap::with_capacity(sources.len());
    let mut seen: HashMap<u64, String> = HashMap::new();
    for (name, rule) in sources {
        let id = resolve(&name, nodes)?;
        if let Some(other) = seen.insert(id, name.clone()) {
            return Err(format!(
                "sources '{other}' and '{name}' both name node {id}"
            ));
        }
        out.insert(id, rule);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_by_id_or_declared_name_and_never_twice() {
        let nodes = BTreeMap::from([("tokyo".to_owned(), 7)]);
        let sources = BTreeMap::from([("tokyo".to_owned(), 'a'), ("9".to_owned(), 'b')]);
        let got = by_node(sources, &nodes).unwrap();
        assert_eq!((got[&7], got[&9]), ('a', 'b'));
        let twice = BTreeMap::from([("tokyo".to_owned(), 'a'), ("7".to_owned(), 'b')]);
        assert!(by_node(twice, &nodes)
            .unwrap_err()
            .contains("both name node 7"));
        let unknown = BTreeMap::from([("osaka".to_owned(), 'a')]);
        assert!(by_node(unknown, &nodes).unwrap_err().contains("'osaka'"));
    }
}
