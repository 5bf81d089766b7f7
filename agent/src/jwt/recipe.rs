//! What a `jwt_bearer` connection's tokens are made from, as one digest: a reload keeps a
//! connection's cached token (and reused JWT) only while its recipe stays the same.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use serde_json::{Map, Value};

use super::{Algorithm, KeyMaterial};
use crate::config::Exchange;

/// SHA-256 over everything a connection's `JwtBearer` is built of: the algorithm, the key
/// or secret as read (the bytes, not the file's name: a reload reads key files anew), the
/// headers (with a certificate's thumbprints), the payload, `reuse_for` and the exchange
/// settings. A digest, not a copy, so no second copy of a key stays in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Recipe([u8; 32]);

impl fmt::Debug for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recipe([digest])")
    }
}

impl Recipe {
    pub fn of(
        algorithm: Algorithm,
        key: &KeyMaterial,
        headers: &BTreeMap<String, String>,
        payload: &Map<String, Value>,
        reuse_for: Option<Duration>,
        exchange: Option<&Exchange>,
    ) -> Self {
        let mut d = Digest(Context::new(&SHA256));
        d.part(format!("{algorithm:?}").as_bytes());
        match key {
            KeyMaterial::Secret(bytes) => d.part(b"secret").part(bytes),
            KeyMaterial::PrivateKeyPem(pem) => d.part(b"pem").part(pem.as_bytes()),
        };
        d.map(headers);
        d.part(Value::Object(payload.clone()).to_string().as_bytes());
        d.part(format!("{reuse_for:?}").as_bytes());
        match exchange {
            None => d.part(b"direct"),
            Some(x) => d
                .part(x.token_url.as_str().as_bytes())
                .part(x.grant_type.as_bytes())
                .part(format!("{:?} {:?}", x.body, x.client_auth).as_bytes())
                .part(&[u8::from(x.client_assertion)])
                .part(&x.default_lifetime.as_nanos().to_be_bytes())
                .map(&x.params),
        };
        let digest = d.0.finish();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

struct Digest(Context);

impl Digest {
    /// Length-prefixed, so that no two different lists of parts run together the same.
    fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    fn map(&mut self, map: &BTreeMap<String, String>) -> &mut Self {
        self.part(&(map.len() as u64).to_be_bytes());
        for (k, v) in map {
            self.part(k.as_bytes()).part(v.as_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(secret: &[u8], aud: &str, scope: Option<&str>) -> Recipe {
        let payload = serde_json::json!({ "aud": aud });
        let exchange = scope.map(|scope| Exchange {
            token_url: "https://idp.example/token".parse().expect("url"),
            grant_type: crate::config::JWT_BEARER_GRANT.to_owned(),
            body: crate::config::BodyEncoding::Form,
            params: [("scope".to_owned(), scope.to_owned())].into(),
            client_assertion: false,
            client_auth: crate::config::ClientAuth::Body,
            default_lifetime: Duration::from_secs(600),
        });
        Recipe::of(
            Algorithm::HS256,
            &KeyMaterial::Secret(secret.to_vec()),
            &BTreeMap::new(),
            payload.as_object().expect("object"),
            None,
            exchange.as_ref(),
        )
    }

    #[test]
    fn the_same_inputs_give_the_same_recipe_and_any_change_another() {
        let base = recipe(b"k1", "a", Some("read"));
        assert_eq!(base, recipe(b"k1", "a", Some("read")));
        assert_ne!(base, recipe(b"k2", "a", Some("read")), "another key");
        assert_ne!(base, recipe(b"k1", "b", Some("read")), "another claim");
        assert_ne!(base, recipe(b"k1", "a", Some("write")), "another scope");
        assert_ne!(base, recipe(b"k1", "a", None), "no exchange");
        assert!(!format!("{base:?}").contains("k1"));
    }
}
