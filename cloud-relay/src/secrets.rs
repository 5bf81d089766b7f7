//! Fresh secrets from the OS's randomness: agent tokens, API keys and ids.
//! The format lives in `postern_protocol::token`; this adds the entropy.

use postern_protocol::token::{BODY_LEN, SecretKind, SecretToken};

pub fn new_token(kind: SecretKind) -> SecretToken {
    let mut random = [0u8; BODY_LEN];
    rand::fill(&mut random);
    SecretToken::generate(kind, &random)
}

/// A public id such as `agt_3kq9…`: 16 lower-case base36 characters.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut random = [0u8; 16];
    rand::fill(&mut random);
    let body: String = random
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{body}")
}
