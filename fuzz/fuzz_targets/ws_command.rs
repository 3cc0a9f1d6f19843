//! `cargo fuzz run ws_command`: the body and its properties are `stellwerk::fuzzing::ws_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stellwerk::fuzzing::ws_command(data);
});
