//! The real `postern` binary's JWT and connection commands: `jwt sign` for all twelve
//! algorithms checked by PyJWT and node's jose, `jwt decode`, `connection list` and `test`.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use base64::Engine;
use postern_tests::harness::{
    Bins, agent_cli, agent_command, offline_agent_config, stderr, stdout,
};
use postern_tests::internal_server::{InternalServer, Verifier};
use postern_tests::pki::{ec256, openssl, rsa_forms};
use postern_tests::temp::TempDir;
use postern_tests::token_endpoint::{EndpointConfig, ExpiresIn, TokenEndpoint};
use serde_json::{Value, json};

const HMAC_TEXT: &str = "a-shared-secret-that-is-long-enough-for-hs384-signing-0123456789";

fn bins() -> Bins {
    postern_tests::bins!()
}

/// Every key form, made by openssl: files in `dir`, mode 0600 where they are secret.
fn make_keys(dir: &TempDir) -> Result<()> {
    let d = dir.path();
    rsa_forms(d)?;
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "rsa.pem",
            "-subj",
            "/CN=postern-client",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ],
    )?;
    let (ec256, ec256_public) = ec256(d)?;
    dir.write_private("ec256.pem", &ec256)?;
    std::fs::write(d.join("ec256-pub.pem"), ec256_public)?;
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ec256.pem",
            "-passout",
            "pass:open sesame",
            "-out",
            "ec256-enc.pem",
        ],
    )?;
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "ec384.pem",
        ],
    )?;
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "ec384.pem",
            "-pubout",
            "-out",
            "ec384-pub.pem",
        ],
    )?;
    openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"])?;
    openssl(
        d,
        &["pkey", "-in", "ed.pem", "-pubout", "-out", "ed-pub.pem"],
    )?;
    for name in [
        "rsa.pem",
        "rsa1.pem",
        "ec256-enc.pem",
        "ec384.pem",
        "ed.pem",
    ] {
        let text = std::fs::read_to_string(d.join(name))?;
        dir.write_private(name, &text)?;
    }
    dir.write_private("passphrase", "open sesame\n")?;
    dir.write_private("hs384.secret", HMAC_TEXT)?;
    dir.write_private("hs-verify.secret", HMAC_TEXT)?;
    Ok(())
}

fn read(dir: &TempDir, name: &str) -> Result<String> {
    Ok(std::fs::read_to_string(dir.path().join(name))?)
}

#[test]
fn jwt_sign_makes_tokens_pyjwt_and_jose_accept_for_every_algorithm() -> Result<()> {
    let dir = TempDir::new("jwt-cli-sign")?;
    make_keys(&dir)?;
    let hs512_raw: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let hs512_b64 = base64::engine::general_purpose::STANDARD.encode(&hs512_raw);
    // RS512's key arrives as one line with literal \n, as from a secret store.
    let one_line = read(&dir, "rsa.pem")?.trim().replace('\n', "\\n");
    let cases: [(&str, &str, &str); 12] = [
        ("HS256", &format!("secret = \"{HMAC_TEXT}\""), "hs-text"),
        ("HS384", "secret_file = \"hs384.secret\"", "hs-text"),
        (
            "HS512",
            "secret_env = \"HS512_SECRET\"\nsecret_encoding = \"base64\"",
            "hs512",
        ),
        ("RS256", "private_key_file = \"rsa.pem\"", "rsa-pub.pem"),
        ("RS384", "private_key_file = \"rsa1.pem\"", "rsa-pub.pem"),
        ("RS512", "private_key_env = \"RSA_ONE_LINE\"", "rsa-pub.pem"),
        (
            "PS256",
            "private_key_file = \"rsa.pem\"\ncertificate_file = \"cert.pem\"",
            "rsa-pub.pem",
        ),
        ("PS384", "private_key_file = \"rsa1.pem\"", "rsa-pub.pem"),
        ("PS512", "private_key_file = \"rsa.pem\"", "rsa-pub.pem"),
        (
            "ES256",
            "private_key_file = \"ec256-enc.pem\"\nprivate_key_passphrase_file = \"passphrase\"",
            "ec256-pub.pem",
        ),
        ("ES384", "private_key_file = \"ec384.pem\"", "ec384-pub.pem"),
        ("EdDSA", "private_key_file = \"ed.pem\"", "ed-pub.pem"),
    ];
    let mut connections = String::new();
    for (alg, key, _) in &cases {
        connections.push_str(&format!(
            "\n[connections.{name}]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.{name}.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"{alg}\"\n{key}\nheaders = {{ kid = \"{alg}-key\" }}\nlifetime = \"20m\"\npayload = {{ iss = \"postern\", sub = \"svc\", aud = \"pyjwt-check\", jti = \"{{{{uuid}}}}\", scope = [\"a\", \"b\"] }}\n",
            name = alg.to_lowercase(),
        ));
    }
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &connections),
    )?;
    let envs = [
        ("HS512_SECRET", hs512_b64.as_str()),
        ("RSA_ONE_LINE", one_line.as_str()),
    ];
    let mut input = Vec::new();
    for (alg, _, verify) in &cases {
        let out = agent_command(
            &bins(),
            &config,
            &["jwt", "sign", "--connection", &alg.to_lowercase()],
        )
        .envs(envs.iter().copied())
        .output()?;
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout(&out).trim().to_owned();
        assert_eq!(token.split('.').count(), 3, "{alg}: {token}");
        let key = match *verify {
            "hs-text" => json!({ "text": HMAC_TEXT }),
            "hs512" => json!({ "base64": hs512_b64 }),
            file => json!({ "text": read(&dir, file)? }),
        };
        input.push(json!({ "alg": alg, "token": token, "key": key }));
    }
    let script = r#"
import base64, hashlib, json, ssl, sys, jwt
cases, cert = json.load(sys.stdin)
der = ssl.PEM_cert_to_DER_cert(cert)
thumb = lambda h: base64.urlsafe_b64encode(h(der).digest()).rstrip(b"=").decode()
out = []
for c in cases:
    key = c["key"].get("text") or base64.b64decode(c["key"].get("base64", ""))
    claims = jwt.decode(c["token"], key, algorithms=[c["alg"]], audience="pyjwt-check", options={"require": ["exp", "iat", "jti"]})
    header = jwt.get_unverified_header(c["token"])
    out.append({"alg": header["alg"], "kid": header.get("kid"), "lifetime": claims["exp"] - claims["iat"],
                "types": [type(claims["exp"]).__name__, type(claims["iat"]).__name__], "scope": claims["scope"],
                "x5t_ok": header.get("x5t") == thumb(hashlib.sha1) and header.get("x5t#S256") == thumb(hashlib.sha256),
                "has_x5t": "x5t" in header})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 with PyJWT (pip install 'pyjwt[crypto]')")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&serde_json::to_vec(&json!([
            input,
            read(&dir, "cert.pem")?
        ]))?)?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "PyJWT refused a token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(results.len(), 12);
    let from_jose = node_jose_verify(&input)?;
    assert_eq!(from_jose.len(), 12);
    for (result, (alg, _, _)) in from_jose.iter().zip(&cases) {
        assert_eq!(result["alg"], *alg, "node jose");
        assert_eq!(result["lifetime"], 1200, "node jose, {alg}");
        assert_eq!(result["sub"], "svc", "node jose, {alg}");
    }
    for (result, (alg, _, _)) in results.iter().zip(&cases) {
        assert_eq!(result["alg"], *alg);
        assert_eq!(result["kid"], format!("{alg}-key"));
        assert_eq!(result["lifetime"], 1200, "{alg}: lifetime = 20m");
        assert_eq!(result["types"], json!(["int", "int"]), "{alg}");
        assert_eq!(result["scope"], json!(["a", "b"]));
        let want_x5t = *alg == "PS256";
        assert_eq!(result["has_x5t"], want_x5t, "{alg}");
        if want_x5t {
            assert_eq!(
                result["x5t_ok"], true,
                "x5t and x5t#S256 are the certificate's thumbprints"
            );
        }
    }
    Ok(())
}

/// Verifies each `{alg, token, key}` with node's `jose` (installed globally by `.ci/run`:
/// `npm install -g jose@6`), a second verifier written apart from PyJWT.
fn node_jose_verify(input: &[Value]) -> Result<Vec<Value>> {
    let script = r#"
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
(async () => {
  const jose = await import(require.resolve("jose"));
  const out = [];
  for (const c of input) {
    let key;
    if (c.key.base64) key = new Uint8Array(Buffer.from(c.key.base64, "base64"));
    else if (c.alg.startsWith("HS")) key = new TextEncoder().encode(c.key.text);
    else key = await jose.importSPKI(c.key.text, c.alg);
    const { payload, protectedHeader } = await jose.jwtVerify(c.token, key, {
      audience: "pyjwt-check", algorithms: [c.alg], requiredClaims: ["exp", "iat", "jti"] });
    out.push({ alg: protectedHeader.alg, lifetime: payload.exp - payload.iat, sub: payload.sub });
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"#;
    let node_path = std::env::var("NODE_PATH").unwrap_or_default();
    let mut child = Command::new("node")
        .args(["-e", script])
        .env(
            "NODE_PATH",
            format!("{node_path}:/usr/local/lib/node_modules:/usr/lib/node_modules"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("node (with jose: npm install -g jose@6)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&serde_json::to_vec(input)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "node jose refused a token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `jwt sign` loads the connection it signs for, with the settings all share, as
/// `connection test` does: before 2026-12-07 another connection's `secret_env`, set only in
/// the service's environment, stopped it.
#[test]
fn jwt_sign_needs_only_its_own_connection() -> Result<()> {
    let dir = TempDir::new("jwt-cli-one")?;
    make_keys(&dir)?;
    let unset = "POSTERN_TEST_NEVER_SET_4711";
    let connections = format!(
        "\n[connections.es]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.es.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES384\"\nprivate_key_file = \"ec384.pem\"\nlifetime = \"10m\"\n\n[connections.envy]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.envy.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_env = \"{unset}\"\nlifetime = \"10m\"\n"
    );
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &connections),
    )?;
    let signed = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "es"])?;
    assert!(signed.status.success(), "{}", stderr(&signed));
    assert_eq!(
        stdout(&signed).trim().split('.').count(),
        3,
        "{}",
        stdout(&signed)
    );
    let envy = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "envy"])?;
    assert!(!envy.status.success());
    assert!(stderr(&envy).contains(unset), "{}", stderr(&envy));
    let nope = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "nope"])?;
    assert!(!nope.status.success());
    assert!(
        stderr(&nope).contains("no connection named \"nope\""),
        "{}",
        stderr(&nope)
    );
    Ok(())
}

#[test]
fn jwt_decode_shows_claims_and_checks_signatures() -> Result<()> {
    let dir = TempDir::new("jwt-cli-decode")?;
    make_keys(&dir)?;
    let connections = "\n[connections.es]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.es.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES384\"\nprivate_key_file = \"ec384.pem\"\nlifetime = \"10m\"\npayload = { sub = \"decode-me\" }\n\n[connections.hs]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.hs.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_file = \"hs384.secret\"\npayload = { sub = \"hmac\" }\n";
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", connections),
    )?;
    let signed = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "es"])?;
    assert!(signed.status.success());
    let token = stdout(&signed).trim().to_owned();

    let out = agent_cli(&bins(), &config, &["jwt", "decode", &token])?;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("\"alg\": \"ES384\""), "{text}");
    assert!(text.contains("\"sub\": \"decode-me\""), "{text}");
    assert!(text.contains("(in 9m"), "exp is explained: {text}");
    assert!(text.contains("signature: not checked"), "{text}");

    let public = dir.path().join("ec384-pub.pem");
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "jwt",
            "decode",
            &token,
            "--verify-with",
            &public.to_string_lossy(),
        ],
    )?;
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("signature: valid (ES384"),
        "{}",
        stdout(&out)
    );

    // Claims changed after signing: the signature no longer matches, exit code 1.
    let tampered = {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        parts.join(".")
    };
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "jwt",
            "decode",
            &tampered,
            "--verify-with",
            &public.to_string_lossy(),
        ],
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("signature: INVALID"),
        "{}",
        stdout(&out)
    );

    // HS*: the key file holds the shared secret; the token may come from stdin.
    let hs = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "hs"])?;
    let secret = dir.path().join("hs-verify.secret");
    let mut child = Command::new(bins().agent)
        .args(["jwt", "decode", "-", "--verify-with"])
        .arg(&secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(&hs.stdout)?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("signature: valid (HS256"),
        "{}",
        stdout(&out)
    );

    let out = agent_cli(&bins(), &config, &["jwt", "decode", "not-a-jwt"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a compact JWT"));
    // `-` with nothing on stdin (agent_cli closes it) says there was no token.
    let out = agent_cli(&bins(), &config, &["jwt", "decode", "-"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no token to decode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn connection_list_names_connections_without_secrets() -> Result<()> {
    let dir = TempDir::new("jwt-cli-list")?;
    make_keys(&dir)?;
    let connections = format!(
        "\n[connections.orders]\nbase_uri = \"http://127.0.0.1:9000/api\"\n[connections.orders.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"{HMAC_TEXT}\"\n\n[connections.crm]\nbase_uri = \"https://crm.internal/v2\"\n[connections.crm.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"rsa.pem\"\n[connections.crm.auth.exchange]\ntoken_url = \"https://login.example/oauth2/token\"\n\n[connections.open]\nbase_uri = \"http://inventory.internal\"\n"
    );
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &connections),
    )?;
    let out = agent_cli(&bins(), &config, &["connection", "list"])?;
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with("crm ")
            && lines[1].contains("https://crm.internal/v2")
            && lines[1]
                .ends_with("jwt_bearer RS256 (exchange at https://login.example/oauth2/token)"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("open ") && lines[2].ends_with("none"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("orders ") && lines[3].ends_with("jwt_bearer HS256 (direct)"),
        "{text}"
    );
    let key_line = read(&dir, "rsa.pem")?
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        !text.contains(HMAC_TEXT) && !text.contains(&key_line),
        "no secrets"
    );
    let out = agent_cli(&bins(), &config, &["connection", "list", "--json"])?;
    let rows: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(rows[2]["name"], "orders");
    assert_eq!(rows[2]["base_uri"], "http://127.0.0.1:9000/api");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_test_reports_each_step_and_exits_0_or_1() -> Result<()> {
    let dir = TempDir::new("jwt-cli-test")?;
    make_keys(&dir)?;
    let internal =
        InternalServer::start(Verifier::Hs256(HMAC_TEXT.as_bytes().to_vec()), "orders").await?;
    let ec_public = read(&dir, "ec256-pub.pem")?;
    let endpoint = TokenEndpoint::start(EndpointConfig {
        key: jsonwebtoken::DecodingKey::from_ec_pem(ec_public.as_bytes())?,
        algorithm: jsonwebtoken::Algorithm::ES256,
        audience: "https://idp.test/token".to_owned(),
        issuer: "postern".to_owned(),
        grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
        expires_in: ExpiresIn::Number(600),
        delay: std::time::Duration::ZERO,
        reissue: false,
    })
    .await?;
    let hs_auth = format!(
        "type = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"{HMAC_TEXT}\"\nlifetime = \"5m\"\npayload = {{ aud = \"orders\", sub = \"svc\" }}"
    );
    let connections = format!(
        r#"
[connections.orders]
base_uri = "{internal}"
test = {{ method = "GET", path = "/health", expect_status = 200 }}
[connections.orders.auth]
{hs_auth}

[connections.picky]
base_uri = "{internal}"
test = {{ path = "/health", expect_status = 204 }}
[connections.picky.auth]
{hs_auth}

[connections.erp]
base_uri = "{api}"
test = {{ path = "/ping" }}
[connections.erp.auth]
type = "jwt_bearer"
algorithm = "ES256"
private_key_file = "ec256.pem"
lifetime = "5m"
payload = {{ iss = "postern", aud = "https://idp.test/token" }}
[connections.erp.auth.exchange]
token_url = "{token_url}"

[connections.dead]
base_uri = "http://127.0.0.1:9/api"
timeout = "2s"
"#,
        internal = internal.base_uri(),
        api = endpoint.api_uri(),
        token_url = endpoint.token_url(),
    );
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &connections),
    )?;
    let test = |name: &str| agent_cli(&bins(), &config, &["connection", "test", name]);

    let out = test("orders")?;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!(
            "connection orders: GET {}/health\n",
            internal.base_uri()
        )),
        "{text}"
    );
    for needle in [
        "ok    dns    127.0.0.1",
        "ok    tcp    connected to",
        "ok    token  HS256 JWT signed (direct bearer)",
        "ok    http   200 OK, expected 200",
        "result: ok (latency ",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let seen = internal.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/api/health");

    let out = test("picky")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL  http   200 OK, expected 204"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).ends_with("result: failed\n"));

    let out = test("erp")?;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "ok    token  ES256 JWT exchanged at {}",
            endpoint.token_url()
        )),
        "{text}"
    );
    assert_eq!(endpoint.exchanges().len(), 1);
    assert_eq!(endpoint.calls().len(), 1);

    let out = test("dead")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL  tcp    cannot connect to 127.0.0.1:9"),
        "{}",
        stdout(&out)
    );

    let out = agent_cli(
        &bins(),
        &config,
        &["connection", "test", "orders", "--json"],
    )?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["ok"], true);
    assert_eq!(report["status"], 200);
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(4));

    let out = test("nope")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection named \"nope\""));
    Ok(())
}

/// A `certificate_file` made for another key is refused when the config loads, not at
/// the first call the identity provider refuses (Azure: AADSTS700027).
#[test]
fn a_certificate_of_another_key_is_refused_at_load() -> Result<()> {
    let dir = TempDir::new("jwt-cli-cert-key")?;
    make_keys(&dir)?;
    // cert.pem certifies rsa.pem's key (rsa1.pem is the same key as PKCS#1); other/rsa.pem
    // is another key.
    std::fs::create_dir(dir.path().join("other"))?;
    rsa_forms(&dir.path().join("other"))?;
    let connection = |key: &str| {
        format!(
            "\n[connections.idp]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.idp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"PS256\"\nprivate_key_file = \"{key}\"\ncertificate_file = \"cert.pem\"\nlifetime = \"5m\"\npayload = {{ aud = \"x\" }}\n"
        )
    };
    let mismatched = dir.write_private(
        "mismatched.toml",
        &offline_agent_config("127.0.0.1:1", &connection("other/rsa.pem")),
    )?;
    let out = agent_command(&bins(), &mismatched, &["config", "check"]).output()?;
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "cert.pem is not the certificate of this private key (its public key is another's)"
        ),
        "{said}"
    );
    let matched = dir.write_private(
        "matched.toml",
        &offline_agent_config("127.0.0.1:1", &connection("rsa.pem")),
    )?;
    let out = agent_command(&bins(), &matched, &["config", "check"]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A key restricted to PSS (`openssl genpkey -algorithm RSA-PSS`) signs PS256/384/512,
/// checked by PyJWT and by `postern jwt decode` with the key's own public half (and a
/// certificate for it), and is refused for RS256 saying why.
#[test]
fn an_rsa_pss_key_signs_the_pss_algorithms_only() -> Result<()> {
    let dir = TempDir::new("jwt-cli-pss")?;
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA-PSS",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "made.pem",
        ],
    )?;
    openssl(
        d,
        &["pkey", "-in", "made.pem", "-pubout", "-out", "pss-pub.pem"],
    )?;
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "made.pem",
            "-subj",
            "/CN=pss",
            "-days",
            "1",
            "-out",
            "pss-cert.pem",
        ],
    )?;
    dir.write_private("pss.pem", &read(&dir, "made.pem")?)?;
    let connection = |alg: &str| {
        format!(
            "\n[connections.{name}]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.{name}.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"{alg}\"\nprivate_key_file = \"pss.pem\"\nlifetime = \"5m\"\npayload = {{ aud = \"pyjwt-check\" }}\n",
            name = alg.to_lowercase()
        )
    };
    let signing = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", &(connection("PS256") + &connection("PS384"))),
    )?;
    for alg in ["PS256", "PS384"] {
        let out = agent_command(
            &bins(),
            &signing,
            &["jwt", "sign", "--connection", &alg.to_lowercase()],
        )
        .output()?;
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verified = Command::new("python3")
            .args([
                "-c",
                "import sys, jwt; jwt.decode(sys.argv[1], open(sys.argv[2]).read(), algorithms=[sys.argv[3]], audience='pyjwt-check'); print('ok')",
            ])
            .arg(stdout(&out).trim())
            .arg(d.join("pss-pub.pem"))
            .arg(alg)
            .output()?;
        assert!(
            verified.status.success(),
            "PyJWT refused the {alg} token: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        // `postern jwt decode` verifies it too, with the key's public half or a
        // certificate for it, as `openssl` writes them.
        let token = stdout(&out).trim().to_owned();
        for key in ["pss-pub.pem", "pss-cert.pem"] {
            let decoded = agent_command(
                &bins(),
                &signing,
                &[
                    "jwt",
                    "decode",
                    &token,
                    "--verify-with",
                    &d.join(key).to_string_lossy(),
                ],
            )
            .output()?;
            assert!(
                stdout(&decoded).contains(&format!("signature: valid ({alg}")),
                "{alg} with {key}: {}{}",
                stdout(&decoded),
                String::from_utf8_lossy(&decoded.stderr)
            );
        }
    }
    let refused = dir.write_private(
        "rs.toml",
        &offline_agent_config("127.0.0.1:1", &connection("RS256")),
    )?;
    let out = agent_command(&bins(), &refused, &["config", "check"]).output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("algorithm RS256 needs an RSA key of at least 2048 bits, but the key is RSA-PSS 2048-bit (restricted to PSS signatures: PS256, PS384, PS512)"),
        "{said}"
    );
    Ok(())
}
