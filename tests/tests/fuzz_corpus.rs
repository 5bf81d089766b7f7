//! Every cargo-fuzz target's body (tests/fuzz/src/lib.rs, the same file) over its seeds
//! and a few thousand mutations of them from a fixed-seed generator, bounded in count and
//! time: the fuzzers' promises hold in every `cargo test`, not only in long runs by hand.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;
use std::time::{Duration, Instant};

/// Mutations per target, and the time one target may take at most.
const MUTATIONS: usize = 20_000;
const TIME_PER_TARGET: Duration = Duration::from_secs(15);

/// xorshift64*: deterministic, so a failure here repeats exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that tend to matter to these parsers.
const INTERESTING: &[&[u8]] = &[
    b"%",
    b"%2e",
    b"%2f",
    b"%00",
    b"%0d%0a",
    b"..",
    b"/",
    b"//",
    b"\\",
    b"@",
    b"://",
    b"#",
    b"?",
    b"{{",
    b"}}",
    b"now",
    b"+",
    b"-",
    b"env.",
    b"\n",
    b"\r\n",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b"=",
    b"-----BEGIN ",
    b"-----END ",
    b"PRIVATE KEY-----",
    b"\\n",
    b"\xff",
    b"\xc3\xa9",
    b"http:",
    b"test:",
    b"[connections.x]",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            1 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece.iter().copied());
            }
            2 if !data.is_empty() => {
                let from = rng.below(data.len());
                let to = (from + rng.below(16)).min(data.len());
                data.drain(from..to);
            }
            3 => data.truncate(rng.below(data.len() + 1)),
            _ => {
                let at = rng.below(data.len() + 1);
                let copy: Vec<u8> = data[at..].iter().take(32).copied().collect();
                data.extend(copy);
            }
        }
    }
    data
}

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_their_mutations() {
    let seeds_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for target in bodies::TARGETS {
        let dir = seeds_dir.join(target);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().and_then(|e| std::fs::read(e.path()).ok()))
            .collect();
        assert!(!seeds.is_empty(), "no seeds for {target}");
        seeds.sort();
        for seed in &seeds {
            bodies::run(target, seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        let started = Instant::now();
        for _ in 0..MUTATIONS {
            if started.elapsed() > TIME_PER_TARGET {
                break;
            }
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed);
            let shown = String::from_utf8_lossy(&input).into_owned();
            let outcome = std::panic::catch_unwind(|| bodies::run(target, &input));
            assert!(outcome.is_ok(), "{target} broke on {shown:?}");
        }
    }
}
