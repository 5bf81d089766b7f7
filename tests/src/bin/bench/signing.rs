//! Scenario 4, signing: JWTs per second on one core for HS256, RS256, PS256, ES256 and
//! EdDSA, with the agent's own signer over a payload with a template and a fresh jti.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use postern_agent::jwt::{Algorithm, JwtSigner, KeyMaterial, PayloadTemplate};

use crate::table::{Row, Table};
use crate::{Args, World};

pub fn run(w: &World, args: &Args, rows: &mut Table) -> Result<()> {
    let dir = w.dir.path();
    let ec = openssl_key(
        dir,
        "ec.pem",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    )?;
    let ed = openssl_key(dir, "ed.pem", &["genpkey", "-algorithm", "ed25519"])?;
    let rsa = &w.rsa.private_pem;
    for (alg, key) in [
        (
            Algorithm::HS256,
            KeyMaterial::Secret(b"bench-secret-of-thirty-two-bytes!".to_vec()),
        ),
        (Algorithm::RS256, KeyMaterial::PrivateKeyPem(rsa.clone())),
        (Algorithm::PS256, KeyMaterial::PrivateKeyPem(rsa.clone())),
        (Algorithm::ES256, KeyMaterial::PrivateKeyPem(ec.clone())),
        (Algorithm::EdDSA, KeyMaterial::PrivateKeyPem(ed.clone())),
    ] {
        let rate = sign_rate(alg, key, args.sign_seconds)?;
        rows.push(Row::postern(
            format!("signing {alg:?}"),
            "JWTs/s/core",
            rate,
        ));
    }
    Ok(())
}

fn sign_rate(algorithm: Algorithm, key: KeyMaterial, seconds: u64) -> Result<f64> {
    let payload = serde_json::json!({"iss": "bench", "aud": "api", "iat": "{{now}}", "exp": "{{now + 300}}", "jti": "{{uuid}}"});
    let serde_json::Value::Object(payload) = payload else {
        bail!("payload")
    };
    let signer = JwtSigner::new(
        algorithm,
        key,
        &BTreeMap::new(),
        PayloadTemplate::parse(&payload)?,
    )?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..16 {
            signer.sign(1_700_000_000, &|_| Err(std::env::VarError::NotPresent))?;
        }
        n += 16;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> Result<String> {
    let path = dir.join(name);
    let ok = Command::new("openssl")
        .args(args)
        .arg("-out")
        .arg(&path)
        .status()?
        .success();
    if !ok {
        bail!("openssl {args:?} failed");
    }
    Ok(std::fs::read_to_string(path)?)
}
