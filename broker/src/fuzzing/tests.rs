//! The fuzz targets' smoke run, part of `cargo test`: every target over its checked-in corpus
//! (`fuzz/corpus/<target>/`, seeds and every crash found so far) plus a few thousand
//! random and mutated inputs from a fixed seed. Not coverage-guided fuzzing: that is
//! `cargo fuzz run <target>` (`fuzz/README.md`).

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::TARGETS;

/// Random and mutated inputs per target, on top of the corpus.
const GENERATED_INPUTS: usize = 4_000;
/// Longest generated input (libFuzzer's default `-max_len` is 4096).
const MAX_LEN: usize = 1_024;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read(file).expect("corpus file"))
        .collect()
}

/// An input made like a simple mutating fuzzer: a corpus entry changed a few times, or
/// random bytes.
fn generated(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if corpus.is_empty() || rng.gen_ratio(1, 4) {
        let len = rng.gen_range(0..=MAX_LEN);
        return (0..len).map(|_| rng.gen()).collect();
    }
    let mut input = corpus[rng.gen_range(0..corpus.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=input.len());
        match rng.gen_range(0..5) {
            0 if at < input.len() => input[at] ^= 1 << rng.gen_range(0..8),
            1 if at < input.len() => input[at] = rng.gen(),
            2 => input.insert(at, rng.gen()),
            3 if at < input.len() => {
                input.remove(at);
            }
            _ => {
                // Splice in a piece of another entry.
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let from = rng.gen_range(0..=other.len());
                let to = rng.gen_range(from..=other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
        }
    }
    input.truncate(MAX_LEN);
    input
}

/// Runs `target` over its corpus and generated inputs; a failure names the input.
fn smoke(name: &str) {
    let (index, (_, target)) = TARGETS
        .iter()
        .enumerate()
        .find(|(_, (n, _))| *n == name)
        .expect("a target of that name");
    let corpus = corpus(name);
    assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty");
    let mut rng = StdRng::seed_from_u64(0x5757_0000 + index as u64);
    let generated = (0..GENERATED_INPUTS).map(|_| generated(&mut rng, &corpus));
    let mut accepted = 0;
    for input in corpus.clone().into_iter().chain(generated) {
        match std::panic::catch_unwind(|| target(&input)) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("{name} failed on input b\"{}\"", input.escape_ascii()),
        }
    }
    // The properties of accepted inputs are checked only if some get that far.
    assert!(
        accepted >= GENERATED_INPUTS / 100,
        "{name}: only {accepted} inputs accepted"
    );
}

#[test]
fn ws_command_smoke() {
    smoke("ws_command");
}

#[test]
fn channel_name_smoke() {
    smoke("channel_name");
}

#[test]
fn sse_cursor_smoke() {
    smoke("sse_cursor");
}

#[test]
fn jwt_smoke() {
    smoke("jwt");
}

#[test]
fn plugin_answer_smoke() {
    smoke("plugin_answer");
}

#[test]
fn every_target_is_smoke_tested() {
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "ws_command",
            "channel_name",
            "sse_cursor",
            "jwt",
            "plugin_answer"
        ]
    );
}
