//! Writes the fuzz targets' seed inputs (`doppel_server::fuzzing::seeds`) into a corpus
//! folder, one sub-folder per target, each file named by the xxh3 of its bytes:
//! `cargo run -p doppel-server --example fuzz_seeds -- fuzz/corpus`.
//!
//! The `plugin` target also gets one small component per role (about 1 KB, a core module
//! in WAT that answers every export with zeros, wrapped by `wit-component`): the
//! built-in plugins are 100 KB or more, and the fuzzer's mutations of those spend each
//! execution compiling them.

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let mut all = doppel_server::fuzzing::seeds();
    let plugins = all.entry("plugin").or_default();
    // The role byte is the index `fuzzing::plugin` picks the role by.
    for (role, (world, export, params)) in [
        ("filter", "filter", 4),
        ("transform", "transform", 4),
        ("rule", "depends", 4),
        ("resolver", "resolve", 12),
    ]
    .into_iter()
    .enumerate()
    {
        let mut input = vec![role as u8];
        input.extend_from_slice(&small_plugin(world, export, params));
        plugins.push(input);
    }
    for (target, inputs) in all {
        let dir = std::path::Path::new(&root).join(target);
        std::fs::create_dir_all(&dir)?;
        for input in inputs {
            let name = format!("seed-{:016x}", xxhash_rust::xxh3::xxh3_64(&input));
            std::fs::write(dir.join(name), &input)?;
        }
    }
    Ok(())
}

/// The smallest component of `world` that loads: every export answers zeros (an empty
/// result; the contract version 2).
fn small_plugin(world: &str, export: &str, params: usize) -> Vec<u8> {
    let params = "(param i32)".repeat(params);
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "contract-version") (result i32) (i32.const 2))
  (func (export "config-schema") (result i32) (i32.const 64))
  (func (export "configure") (param i32 i32) (result i32) (i32.const 64))
  (func (export "{export}") {params} (result i32) (i32.const 64)))"#
    );
    let module = wat::parse_str(&wat).expect("the seed's WAT");
    doppel_server::plugins::wrap::wrap_module(module, world).expect("a component")
}
