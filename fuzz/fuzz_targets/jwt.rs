//! `cargo fuzz run jwt`: the body and its properties are `stellwerk::fuzzing::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stellwerk::fuzzing::jwt(data);
});
