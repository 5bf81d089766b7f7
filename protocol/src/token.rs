//! Access tokens (`pst_…`) and API keys (`psk_…`): a recognisable prefix, a
//! random base62 body and a checksum, so typos are caught offline and scanners find leaks.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters of the random body (≈238 bits).
pub const BODY_LEN: usize = 40;
/// Base62 characters of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Leading body characters that name the token in the store (not secret).
pub const LOOKUP_ID_LEN: usize = 12;

/// Which kind of secret a token is; each has its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// An agent's access token.
    AgentToken,
    /// A caller's API key.
    ApiKey,
}

impl SecretKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::AgentToken => "pst_",
            Self::ApiKey => "psk_",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::AgentToken => "access token",
            Self::ApiKey => "API key",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{noun} must start with {prefix:?}")]
    Prefix {
        noun: &'static str,
        prefix: &'static str,
    },
    /// The other kind, given for this one: an easy slip, as both come from the relay.
    #[error(
        "{noun} must start with {prefix:?}, and this is an {other} ({other_prefix}…): the relay gives agents access tokens (`postern-relay agent create`) and the platform API keys"
    )]
    OtherKind {
        noun: &'static str,
        prefix: &'static str,
        other: &'static str,
        other_prefix: &'static str,
    },
    #[error("{noun} has {found} characters, expected {expected}")]
    Length {
        noun: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{noun} holds a character that is not a letter or digit")]
    Alphabet { noun: &'static str },
    #[error("{noun} checksum does not match: it was mistyped or truncated")]
    Checksum { noun: &'static str },
}

/// A well-formed token or key. `Debug` and `Display` never show the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken {
    kind: SecretKind,
    full: String,
}

impl SecretToken {
    /// Makes a token from random bytes supplied by the caller (the crate does no I/O).
    pub fn generate(kind: SecretKind, random: &[u8; BODY_LEN]) -> Self {
        // `% 62` is slightly biased; 40 characters still carry > 230 bits.
        let body: String = random
            .iter()
            .map(|b| BASE62[(b % 62) as usize] as char)
            .collect();
        let full = format!("{}{}{}", kind.prefix(), body, checksum(kind, &body));
        Self { kind, full }
    }

    /// Checks prefix, length, alphabet and checksum; no network needed.
    pub fn parse(kind: SecretKind, text: &str) -> Result<Self, TokenError> {
        let noun = kind.noun();
        let text = text.trim();
        let Some(rest) = text.strip_prefix(kind.prefix()) else {
            let other = match kind {
                SecretKind::AgentToken => SecretKind::ApiKey,
                SecretKind::ApiKey => SecretKind::AgentToken,
            };
            if text.starts_with(other.prefix()) {
                return Err(TokenError::OtherKind {
                    noun,
                    prefix: kind.prefix(),
                    other: other.noun(),
                    other_prefix: other.prefix(),
                });
            }
            return Err(TokenError::Prefix {
                noun,
                prefix: kind.prefix(),
            });
        };
        let expected = BODY_LEN + CHECKSUM_LEN;
        if rest.len() != expected {
            return Err(TokenError::Length {
                noun,
                found: text.len(),
                expected: expected + kind.prefix().len(),
            });
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::Alphabet { noun });
        }
        let (body, sum) = rest.split_at(BODY_LEN);
        if checksum(kind, body) != sum {
            return Err(TokenError::Checksum { noun });
        }
        Ok(Self {
            kind,
            full: text.to_owned(),
        })
    }

    pub fn kind(&self) -> SecretKind {
        self.kind
    }

    /// The non-secret leading part the store indexes tokens by.
    pub fn lookup_id(&self) -> &str {
        let start = self.kind.prefix().len();
        &self.full[start..start + LOOKUP_ID_LEN]
    }

    /// SHA-256 of the whole token: what the relay stores. Tokens carry > 230 bits
    /// of entropy, so a fast hash is enough (no password-stretching needed).
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.full.as_bytes()).into()
    }

    /// The full secret text, for the one place that must send or show it.
    pub fn expose(&self) -> &str {
        &self.full
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}…(redacted)", self.kind.prefix(), self.lookup_id())
    }
}

fn checksum(kind: SecretKind, body: &str) -> String {
    let digest = Sha256::new()
        .chain_update(kind.prefix())
        .chain_update(body)
        .finalize();
    let mut n = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: SecretKind) -> SecretToken {
        let mut random = [0u8; BODY_LEN];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        SecretToken::generate(kind, &random)
    }

    #[test]
    fn generated_tokens_parse_back() {
        for kind in [SecretKind::AgentToken, SecretKind::ApiKey] {
            let t = sample(kind);
            assert!(t.expose().starts_with(kind.prefix()));
            assert_eq!(t.expose().len(), 4 + BODY_LEN + CHECKSUM_LEN);
            assert_eq!(SecretToken::parse(kind, t.expose()), Ok(t.clone()));
            assert_eq!(
                SecretToken::parse(kind, &format!("  {}\n", t.expose())),
                Ok(t)
            );
        }
    }

    #[test]
    fn typos_are_caught_offline() {
        let t = sample(SecretKind::AgentToken);
        let text = t.expose();
        let mut typo = text.to_owned().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).expect("ascii");
        assert!(matches!(
            SecretToken::parse(SecretKind::AgentToken, &typo),
            Err(TokenError::Checksum { .. })
        ));
        assert!(matches!(
            SecretToken::parse(SecretKind::AgentToken, &text[..text.len() - 1]),
            Err(TokenError::Length { .. })
        ));
        // The other kind is named as such, both ways.
        let swapped = SecretToken::parse(SecretKind::ApiKey, text).map(|_| ());
        assert!(
            matches!(swapped, Err(TokenError::OtherKind { .. })),
            "{swapped:?}"
        );
        let key = sample(SecretKind::ApiKey);
        let said = SecretToken::parse(SecretKind::AgentToken, key.expose())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            said.starts_with(
                "access token must start with \"pst_\", and this is an API key (psk_…)"
            ),
            "{said}"
        );
        assert!(matches!(
            SecretToken::parse(SecretKind::AgentToken, "ghp_abc"),
            Err(TokenError::Prefix { .. })
        ));
        let bad_char = format!("{}!{}", &text[..8], &text[9..]);
        assert!(matches!(
            SecretToken::parse(SecretKind::AgentToken, &bad_char),
            Err(TokenError::Alphabet { .. })
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = sample(SecretKind::AgentToken);
        let shown = format!("{t:?}");
        assert!(!shown.contains(&t.expose()[4 + LOOKUP_ID_LEN..]));
        assert!(shown.contains("redacted"));
    }
}
