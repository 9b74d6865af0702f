//! Built-in filter: drops reads and keeps writes (SPEC E1), so that a link that sees
//! every operation replicates only changes. No configuration.

use doppel_sdk::{NoConfig, Record};

pub fn keep(r: &Record<'_>, _: &NoConfig) -> bool {
    r.op.is_write()
}

doppel_sdk::filter!(keep, NoConfig);

#[cfg(test)]
mod tests {
    use super::*;
    use doppel_sdk::testing::filter;
    use doppel_sdk::{Op, OwnedRecord};

    #[test]
    fn reads_are_dropped_and_writes_kept() {
        let recs: Vec<_> = [Op::Read, Op::Insert, Op::Update, Op::Delete]
            .into_iter()
            .map(|op| OwnedRecord::new(op, "f", "k", "{}"))
            .collect();
        let got = filter(keep, "", &recs).unwrap();
        assert_eq!(got, vec![Ok(false), Ok(true), Ok(true), Ok(true)]);
    }
}
