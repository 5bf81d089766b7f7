//! Decrypts a passphrase-protected PKCS#8 key (`BEGIN ENCRYPTED PRIVATE KEY`) into the
//! plain PKCS#8 PEM the key loader reads; other PEM text passes through unchanged.

use super::key::{KeyError, normalize_pem};

/// Returns plain PKCS#8 PEM for an encrypted PKCS#8 key, or the text as given for a plain
/// key; legacy `Proc-Type: 4,ENCRYPTED` PEM is refused with the command that converts it.
pub fn decrypt_if_encrypted(pem_text: &str, passphrase: &str) -> Result<String, KeyError> {
    let normalized = normalize_pem(pem_text);
    let Ok(blocks) = pem::parse_many(&normalized) else {
        return Ok(pem_text.to_owned());
    };
    let legacy = |b: &pem::Pem| {
        b.headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"))
    };
    if blocks.iter().any(legacy) {
        return Err(KeyError::LegacyEncrypted);
    }
    let Some(block) = blocks.iter().find(|b| b.tag() == "ENCRYPTED PRIVATE KEY") else {
        return Ok(pem_text.to_owned());
    };
    let decrypt_error = |e: &dyn std::fmt::Display| KeyError::Decrypt {
        reason: e.to_string(),
    };
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(block.contents())
        .map_err(|e| decrypt_error(&e))?;
    let plain = info.decrypt(passphrase).map_err(|e| decrypt_error(&e))?;
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", plain.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::key::{KeyKind, load_private_key, test_keys::keys};

    #[test]
    fn an_encrypted_pkcs8_key_loads_with_its_passphrase() {
        let k = keys();
        let plain = decrypt_if_encrypted(&k.encrypted_pkcs8, "secret").expect("decrypts");
        let (kind, _) = load_private_key(&plain).expect("loads");
        assert_eq!(kind, KeyKind::EcP256);
        // Pasted with literal \n, as from an environment variable.
        let pasted = k.encrypted_pkcs8.trim().replace('\n', "\\n");
        let plain = decrypt_if_encrypted(&pasted, "secret").expect("decrypts a paste");
        assert_eq!(load_private_key(&plain).expect("loads").0, KeyKind::EcP256);
    }

    #[test]
    fn a_wrong_passphrase_says_so() {
        let err = decrypt_if_encrypted(&keys().encrypted_pkcs8, "wrong").expect_err("refused");
        assert!(matches!(err, KeyError::Decrypt { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("could not decrypt the encrypted PKCS#8 private key ("),
            "{err}"
        );
        assert!(err.to_string().contains("the passphrase is wrong"), "{err}");
    }

    #[test]
    fn legacy_encrypted_pem_gets_the_conversion_command() {
        let err = decrypt_if_encrypted(&keys().legacy_encrypted_rsa, "secret").expect_err("legacy");
        assert_eq!(err, KeyError::LegacyEncrypted);
        assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
    }

    #[test]
    fn plain_keys_pass_through() {
        let k = keys();
        assert_eq!(
            decrypt_if_encrypted(&k.ec256_sec1, "x").expect("unchanged"),
            k.ec256_sec1
        );
        assert_eq!(
            decrypt_if_encrypted("garbage", "x").expect("unchanged"),
            "garbage"
        );
    }
}
