#![no_main]
//! Structured plugins: `smith::upload` (a `wasm-smith` module in a component) through
//! `doppel_server::fuzzing::plugin`, the upload steps. The component passes wasmtime's
//! parser and reaches its compiler, which random bytes rarely do.
#[path = "../smith.rs"]
mod smith;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(upload) = smith::upload(data) {
        doppel_server::fuzzing::plugin(&upload);
    }
});
