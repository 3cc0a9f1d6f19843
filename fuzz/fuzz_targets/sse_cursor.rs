//! `cargo fuzz run sse_cursor`: the body and its properties are `stellwerk::fuzzing::sse_cursor`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stellwerk::fuzzing::sse_cursor(data);
});
