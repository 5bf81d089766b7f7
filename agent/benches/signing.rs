//! JWTs signed per second for each algorithm family, with the agent's own signer over a
//! payload with templates and a fresh `jti`: `cargo bench -p postern-agent --bench signing`.

use std::collections::BTreeMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use criterion::{Criterion, criterion_group, criterion_main};
use postern_agent::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};

fn pkcs8_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))
}

fn keys() -> Vec<(Algorithm, KeyMaterial)> {
    let rng = SystemRandom::new();
    let rsa = KeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let rsa = pkcs8_pem(rsa.as_der().expect("PKCS#8").as_ref());
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("EC key");
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
    vec![
        (
            Algorithm::HS256,
            KeyMaterial::Secret(b"bench-secret-of-thirty-two-bytes!".to_vec()),
        ),
        (Algorithm::RS256, KeyMaterial::PrivateKeyPem(rsa.clone())),
        (Algorithm::PS256, KeyMaterial::PrivateKeyPem(rsa)),
        (
            Algorithm::ES256,
            KeyMaterial::PrivateKeyPem(pkcs8_pem(ec.as_ref())),
        ),
        (
            Algorithm::EdDSA,
            KeyMaterial::PrivateKeyPem(pkcs8_pem(ed.as_ref())),
        ),
    ]
}

fn signing(c: &mut Criterion) {
    let payload = serde_json::json!({
        "iss": "bench", "aud": "api", "iat": "{{now}}", "exp": "{{now + 300}}", "jti": "{{uuid}}"
    });
    let serde_json::Value::Object(payload) = payload else {
        unreachable!("an object literal")
    };
    let mut group = c.benchmark_group("sign");
    group.throughput(criterion::Throughput::Elements(1));
    for (algorithm, key) in keys() {
        let template = PayloadTemplate::parse(&payload).expect("template");
        let signer = JwtSigner::new(algorithm, key, &BTreeMap::new(), template).expect("signer");
        group.bench_function(format!("{algorithm:?}"), |b| {
            b.iter(|| {
                signer
                    .sign(1_700_000_000, &|_| Err(std::env::VarError::NotPresent))
                    .expect("signed")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
