//! Writes the fuzz targets' seed inputs (`doppel_server::fuzzing::seeds`) into a corpus
//! folder, one sub-folder per target, each file named by the xxh3 of its bytes:
//! `cargo run -p doppel-server --example fuzz_seeds -- fuzz/corpus`.

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    for (target, inputs) in doppel_server::fuzzing::seeds() {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        for input in inputs {
            let name = format!("seed-{:016x}", xxhash_rust::xxh3::xxh3_64(&input));
            std::fs::write(dir.join(name), &input)?;
        }
    }
    Ok(())
}
