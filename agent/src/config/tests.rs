use super::*;

fn token() -> String {
    // A well-formed token made with the protocol's own generator.
    SecretToken::generate(
        SecretKind::AgentToken,
        &[7u8; postern_protocol::token::BODY_LEN],
    )
    .expose()
    .to_owned()
}

/// A token with one character changed: right length, wrong checksum.
fn typo_token() -> String {
    let t = token();
    let swapped = if &t[10..11] == "a" { "b" } else { "a" };
    format!("{}{swapped}{}", &t[..10], &t[11..])
}

fn parse(text: &str) -> Result<AgentConfig, String> {
    let file = ConfigFile::parse(text).map_err(|e| e.to_string())?;
    AgentConfig::resolve(file, Path::new("/nonexistent"), &|name| {
        (name == "HMAC").then(|| "a-secret-of-thirty-two-bytes-ok!".to_owned())
    })
    .map_err(|e| e.to_string())
}

fn base(extra: &str) -> String {
    format!(
        "relay = \"127.0.0.1:2222\"\nrelay_fingerprint = \"SHA256:abc\"\ntoken = \"{}\"\n{extra}",
        token()
    )
}

#[test]
fn parses_the_backbone_example_with_hs256() {
    let cfg = parse(&base(
        r#"
[connections.orders]
base_uri = "http://127.0.0.1:9000/api"
timeout = "5s"
[connections.orders.auth]
type = "jwt_bearer"
algorithm = "HS256"
secret_env = "HMAC"
headers = { kid = "k1" }
payload = { iss = "postern", iat = "{{now}}", exp = "{{now + 600}}" }
[connections.open]
base_uri = "https://inventory.internal"
"#,
    ))
    .expect("valid config");
    let orders = cfg.connection("orders").expect("orders");
    assert_eq!(orders.timeout, Duration::from_secs(5));
    assert!(matches!(orders.auth, Auth::JwtBearer(_)));
    let open = cfg.connection("open").expect("open");
    assert!(matches!(open.auth, Auth::None));
    assert_eq!(open.timeout, Duration::from_secs(30));
}

#[test]
fn refuses_what_users_get_wrong() {
    let cases = [
        (base("colour = 1"), "unknown field"),
        (
            base("[connections.a]\nbase_uri = \"ftp://x\""),
            "http:// or https://",
        ),
        (
            base("[connections.a]\nbase_uri = \"http://x\"\ntimeout = \"soon\""),
            "timeout",
        ),
        (
            base("[connections.a]\nbase_uri = \"http://x/?q=1\""),
            "query",
        ),
        (
            base("[connections.\"a b\"]\nbase_uri = \"http://x\""),
            "letters, digits",
        ),
        (
            base(
                "[connections.a]\nbase_uri = \"http://x\"\n[connections.a.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"",
            ),
            "set one of auth.secret",
        ),
        (
            base(
                "[connections.a]\nbase_uri = \"http://x\"\n[connections.a.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"XX1\"\nsecret = \"s\"",
            ),
            "algorithm",
        ),
        (
            base(
                "[connections.a]\nbase_uri = \"http://x\"\n[connections.a.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret = \"s\"\nsecrte = \"t\"",
            ),
            "unknown field",
        ),
        (
            base(
                "[connections.a]\nbase_uri = \"http://x\"\n[connections.a.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_env = \"NOPE\"",
            ),
            "NOPE is not set",
        ),
        (
            format!(
                "relay = \"r:1\"\nrelay_fingerprint = \"SHA256:x\"\ntoken = \"{}\"",
                typo_token()
            ),
            "checksum",
        ),
        (
            format!(
                "relay = \"r\"\nrelay_fingerprint = \"SHA256:x\"\ntoken = \"{}\"",
                token()
            ),
            "host:port",
        ),
        (
            format!(
                "relay = \"r:1\"\nrelay_fingerprint = \"MD5:x\"\ntoken = \"{}\"",
                token()
            ),
            "SHA256",
        ),
        (
            format!(
                "relay = \"r:1\"\nrelay_fingerprint = \"SHA256:x\"\ntoken = \"{}\"\ntoken_env = \"X\"",
                token()
            ),
            "only one of token",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).expect_err(&text);
        assert!(
            err.contains(expected),
            "{text}\n→ {err}\n(expected {expected:?})"
        );
    }
}

#[test]
fn debug_never_shows_the_token() {
    let cfg = parse(&base("")).expect("valid");
    assert!(!format!("{cfg:?}").contains(&token()[20..]));
}

#[test]
fn the_shipped_example_parses() {
    let text = include_str!("../../../packaging/agent.example.toml");
    ConfigFile::parse(text).expect("packaging/agent.example.toml parses");
}
