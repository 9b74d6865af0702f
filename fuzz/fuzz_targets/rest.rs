#![no_main]
//! `doppel_server::fuzzing::rest_body`: see that function.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    doppel_server::fuzzing::rest_body(data);
});
