#![no_main]
//! `doppel_server::fuzzing::wire_frame`: see that function.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    doppel_server::fuzzing::wire_frame(data);
});
