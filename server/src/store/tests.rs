//! Store tests: determinism, alternate keys, limits, snapshots, and a model check.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::block::NO_BLOCK;
use super::*;

fn schema() -> Schema {
    Schema {
        files: vec![
            FileSchema {
                name: "orders".into(),
                alt_keys: vec!["customer".into()],
            },
            FileSchema {
                name: "lines".into(),
                alt_keys: vec![],
            },
        ],
    }
}

fn rec(key: &str, customer: Option<&str>, data: &[u8]) -> Vec<u8> {
    let alts: Vec<(u8, &[u8])> = customer.map(|c| (0u8, c.as_bytes())).into_iter().collect();
    let mut out = Vec::new();
    encode_record(&mut out, key.as_bytes(), &alts, data);
    out
}

fn put(
    store: &mut Store,
    file: FileId,
    mode: PutMode,
    record: &[u8],
) -> Result<Applied, StoreError> {
    let applied = store.apply(Mutation::Put { file, mode, record })?;
    if let Some((file, block)) = applied.reorg {
        store.apply(Mutation::Reorg { file, block }).unwrap();
    }
    Ok(applied)
}

const ORDERS: FileId = 0;
const LINES: FileId = 2;

#[test]
fn schema_ids_cover_main_and_alt_files() {
    let s = schema();
    assert_eq!(s.main_id(0), 0);
    assert_eq!(s.main_id(1), 2);
    assert_eq!(
        s.block_file_names(),
        vec!["orders", "orders#customer", "lines"]
    );
    assert_eq!(s.table_of(1), None, "an alt table is not a main file");
}

#[test]
fn same_mutations_give_identical_blocks() {
    let run = || {
        let mut store = Store::new(schema(), 1024, 1 << 30);
        for i in 0..3000u32 {
            let key = format!("{:06}", (i * 7919) % 5000);
            let customer = format!("c{}", i % 13);
            let data = vec![(i % 200) as u8; (i % 150) as usize];
            put(
                &mut store,
                ORDERS,
                PutMode::Upsert,
                &rec(&key, Some(&customer), &data),
            )
            .unwrap();
            if i % 5 == 0 {
                let _ = store.apply(Mutation::Delete {
                    file: ORDERS,
                    key: format!("{:06}", (i * 31) % 5000).as_bytes(),
                });
            }
        }
        store
    };
    let (a, b) = (run(), run());
    assert_eq!(a.checksums(), b.checksums());
    let bytes = |s: &Store| -> Vec<Vec<u8>> {
        s.files()[0]
            .blocks()
            .map(|(_, b)| b.as_bytes().to_vec())
            .collect()
    };
    assert_eq!(bytes(&a), bytes(&b));
}

#[test]
fn alternate_keys_find_every_match_and_follow_updates() {
    let mut store = Store::new(schema(), 1024, 1 << 30);
    put(
        &mut store,
        ORDERS,
        PutMode::Insert,
        &rec("o1", Some("ann"), b"1"),
    )
    .unwrap();
    put(
        &mut store,
        ORDERS,
        PutMode::Insert,
        &rec("o2", Some("bob"), b"2"),
    )
    .unwrap();
    put(
        &mut store,
        ORDERS,
        PutMode::Insert,
        &rec("o3", Some("ann"), b"3"),
    )
    .unwrap();
    let found: Vec<_> = store
        .lookup_alt(0, 0, b"ann", 100)
        .iter()
        .map(|(_, r)| r.key.to_vec())
        .collect();
    assert_eq!(found, vec![b"o1".to_vec(), b"o3".to_vec()]);
    put(
        &mut store,
        ORDERS,
        PutMode::Update,
        &rec("o1", Some("bob"), b"1"),
    )
    .unwrap();
    assert_eq!(store.lookup_alt(0, 0, b"ann", 100).len(), 1);
    assert_eq!(store.lookup_alt(0, 0, b"bob", 100).len(), 2);
    store
        .apply(Mutation::Delete {
            file: ORDERS,
            key: b"o2",
        })
        .unwrap();
    assert_eq!(store.lookup_alt(0, 0, b"bob", 100).len(), 1);
    // An alt value that is a prefix of another does not match it.
    put(
        &mut store,
        ORDERS,
        PutMode::Insert,
        &rec("o4", Some("bo"), b"4"),
    )
    .unwrap();
    assert_eq!(store.lookup_alt(0, 0, b"bo", 100).len(), 1);
}

#[test]
fn refusals_change_nothing() {
    let mut store = Store::new(schema(), 512, 4 * 512);
    put(&mut store, ORDERS, PutMode::Insert, &rec("a", None, b"x")).unwrap();
    let before = store.checksums();
    assert_eq!(
        put(&mut store, ORDERS, PutMode::Insert, &rec("a", None, b"y")).unwrap_err(),
        StoreError::DuplicateKey
    );
    assert_eq!(
        put(&mut store, ORDERS, PutMode::Update, &rec("zz", None, b"y")).unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        put(&mut store, ORDERS, PutMode::Insert, &rec("", None, b"y")).unwrap_err(),
        StoreError::EmptyKey
    );
    assert!(matches!(
        put(
            &mut store,
            ORDERS,
            PutMode::Insert,
            &rec("big", None, &[0; 600])
        )
        .unwrap_err(),
        StoreError::RecordTooLarge { max: 474, .. }
    ));
    assert_eq!(
        store
            .apply(Mutation::Delete {
                file: ORDERS,
                key: b"nope"
            })
            .unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        put(&mut store, 1, PutMode::Insert, &rec("a", None, b"x")).unwrap_err(),
        StoreError::UnknownFile(1),
        "alt tables are not written directly"
    );
    assert_eq!(store.checksums(), before);
}

#[test]
fn quota_is_a_clear_error_and_the_store_stays_usable() {
    let mut store = Store::new(schema(), 512, 8 * 512);
    let mut inserted = 0;
    let err = loop {
        match put(
            &mut store,
            LINES,
            PutMode::Insert,
            &rec(&format!("{inserted:05}"), None, &[1; 100]),
        ) {
            Ok(_) => inserted += 1,
            Err(err) => break err,
        }
        assert!(inserted < 10_000);
    };
    assert!(
        matches!(
            err,
            StoreError::QuotaExceeded {
                quota_bytes: 4096,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(store.memory_bytes() <= 4096);
    // Deletes and in-place updates still work at the quota.
    store
        .apply(Mutation::Delete {
            file: LINES,
            key: b"00000",
        })
        .unwrap();
    put(
        &mut store,
        LINES,
        PutMode::Update,
        &rec("00001", None, &[2; 100]),
    )
    .unwrap();
    let mut count = 0;
    store.files()[LINES as usize].scan(b"", None, |_| {
        count += 1;
        true
    });
    assert_eq!(count, inserted - 1);
}

#[test]
fn snapshot_is_frozen_and_restores_byte_identical() {
    let mut store = Store::new(schema(), 512, 1 << 30);
    for i in 0..400 {
        put(
            &mut store,
            ORDERS,
            PutMode::Upsert,
            &rec(&format!("{:04}", (i * 13) % 400), Some("c"), &[i as u8; 20]),
        )
        .unwrap();
    }
    let frozen = store.freeze();
    let frozen_sums = frozen.checksums();
    for i in 0..400 {
        put(
            &mut store,
            ORDERS,
            PutMode::Upsert,
            &rec(&format!("{i:04}"), Some("d"), &[9; 30]),
        )
        .unwrap();
    }
    assert_eq!(
        frozen.checksums(),
        frozen_sums,
        "later writes do not disturb the snapshot"
    );
    let (layout, blocks) = frozen.snapshot_parts();
    let used: usize = frozen.files().iter().map(|f| f.allocated_blocks()).sum();
    assert_eq!(blocks.len(), used, "only used blocks are packed");
    let packed: Vec<u8> = blocks.iter().flat_map(|b| b.as_bytes().to_vec()).collect();
    let restored = Store::from_snapshot(layout, 1 << 30, &packed).unwrap();
    assert_eq!(restored.checksums(), frozen_sums);
    assert_eq!(restored.get(ORDERS, b"0013").unwrap().1.data, &[1u8; 20]);
}

#[test]
fn damaged_snapshot_is_refused() {
    let store = Store::new(schema(), 512, 1 << 30);
    let mut store2 = store.clone();
    put(&mut store2, ORDERS, PutMode::Insert, &rec("a", None, b"x")).unwrap();
    let (layout, _) = store2.snapshot_parts();
    assert!(Store::from_snapshot(layout.clone(), 1 << 30, &[0u8; 100]).is_err());
    assert!(Store::from_snapshot(
        layout.clone(),
        1 << 30,
        &vec![0xEEu8; 512 * layout.block_count()]
    )
    .is_err());
}

/// What the `snapshot` fuzz target showed a snapshot decoder must refuse, since reads
/// trust what it built: a slot pointing outside its block (a read would index past
/// the bytes), a chain that loops (a scan would never end) and a location table far
/// longer than the memory quota allows (allocated before anything else is checked).
#[test]
fn a_snapshot_that_reads_would_trip_on_is_refused() {
    let mut store = Store::new(schema(), 512, 1 << 20);
    for i in 0..300 {
        let key = format!("k{:04}", (i * 7) % 300);
        put(
            &mut store,
            ORDERS,
            PutMode::Upsert,
            &rec(&key, None, &[7; 40]),
        )
        .unwrap();
    }
    let (layout, blocks) = store.snapshot_parts();
    let packed: Vec<u8> = blocks.iter().flat_map(|b| b.as_bytes().to_vec()).collect();
    assert!(Store::from_snapshot(layout.clone(), 1 << 20, &packed).is_ok());

    let mut slot_out = packed.clone();
    slot_out[32..34].copy_from_slice(&0xFFFFu16.to_le_bytes());
    assert!(Store::from_snapshot(layout.clone(), 1 << 20, &slot_out).is_err());

    let dense = &layout.files[0].dense;
    let chained = (0..dense.len())
        .find(|i| packed[i * 512 + 8..i * 512 + 12] != NO_BLOCK.to_le_bytes())
        .expect("a block with an overflow chain");
    let mut looped = packed.clone();
    looped[chained * 512 + 8..chained * 512 + 12].copy_from_slice(&dense[chained].to_le_bytes());
    assert!(Store::from_snapshot(layout.clone(), 1 << 20, &looped).is_err());

    let mut huge = layout.clone();
    huge.files[0].layout.table_len = u32::MAX;
    let err = Store::from_snapshot(huge, 1 << 20, &packed).unwrap_err();
    assert!(err.to_string().contains("location table"), "{err}");

    // A layout with no blocks and a block size no store has: refused before a table
    // of two slots per quota byte is built (the fuzz target's timeout input).
    let mut tiny = layout.clone();
    tiny.block_size = 1;
    for file in &mut tiny.files {
        file.dense.clear();
        file.layout.block_size = 1;
        file.layout.table_len = 2 << 20;
    }
    let err = Store::from_snapshot(tiny, 1 << 20, &[]).unwrap_err();
    assert!(err.to_string().contains("block size of 1 bytes"), "{err}");
    let mut mixed = layout.clone();
    mixed.files[0].layout.block_size = 1024;
    let err = Store::from_snapshot(mixed, 1 << 20, &packed).unwrap_err();
    assert!(err.to_string().contains("block size"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// The store behaves like an ordered map under any mix of operations, and a
    /// replay of the same mutations gives the same blocks.
    #[test]
    fn behaves_like_an_ordered_map(
        block_size in prop_oneof![Just(512usize), Just(1024), Just(4096)],
        ops in proptest::collection::vec((0u8..3, 0u16..300, prop_oneof![0usize..40, 0usize..450]), 1..800),
    ) {
        let mut store = Store::new(schema(), block_size, 1 << 30);
        let mut replica = Store::new(schema(), block_size, 1 << 30);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (kind, key, len) in ops {
            let key = format!("{key:04}").into_bytes();
            if kind == 0 {
                let result = store.apply(Mutation::Delete { file: LINES, key: &key });
                prop_assert_eq!(result.is_ok(), model.remove(&key).is_some());
                if result.is_ok() {
                    replica.apply(Mutation::Delete { file: LINES, key: &key }).unwrap();
                }
            } else {
                let data = vec![kind; len];
                let mut record = Vec::new();
                encode_record(&mut record, &key, &[], &data);
                let applied = put(&mut store, LINES, PutMode::Upsert, &record).unwrap();
                put(&mut replica, LINES, PutMode::Upsert, &record).unwrap();
                prop_assert_eq!(applied.before.is_some(), model.insert(key, data).is_some());
            }
        }
        let mut seen = Vec::new();
        store.files()[LINES as usize].scan(b"", None, |r| { seen.push((r.key.to_vec(), r.data.to_vec())); true });
        prop_assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(store.checksums(), replica.checksums());
    }
}
