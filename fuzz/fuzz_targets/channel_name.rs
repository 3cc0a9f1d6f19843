//! `cargo fuzz run channel_name`: the body and its properties are `stellwerk::fuzzing::channel_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stellwerk::fuzzing::channel_name(data);
});
