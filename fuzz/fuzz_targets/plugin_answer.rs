//! `cargo fuzz run plugin_answer`: the body and its properties are `stellwerk::fuzzing::plugin_answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stellwerk::fuzzing::plugin_answer(data);
});
