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

/// Shaped like `postern-relay fingerprint` output (the SHA-256 of nothing).
const FINGERPRINT: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

/// Loads `text` as `run` would, with only `HMAC` set in the environment.
pub(super) fn parse(text: &str) -> Result<AgentConfig, String> {
    let file = ConfigFile::parse(text).map_err(|e| e.to_string())?;
    AgentConfig::resolve(file, Path::new("/nonexistent"), &|name| {
        (name == "HMAC")
            .then(|| "a-secret-of-thirty-two-bytes-ok!".to_owned())
            .ok_or(std::env::VarError::NotPresent)
    })
    .map_err(|e| e.to_string())
}

/// A config that loads, with `extra` after its top-level keys.
pub(super) fn base(extra: &str) -> String {
    format!(
        "relay = \"127.0.0.1:2222\"\nrelay_fingerprint = \"{FINGERPRINT}\"\ntoken = \"{}\"\n{extra}",
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
            base(&format!("status_socket = \"{}.sock\"", "s".repeat(90))),
            "longer than a Unix socket's path may be (107)",
        ),
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
                "relay = \"r:1\"\nrelay_fingerprint = \"{FINGERPRINT}\"\ntoken = \"{}\"",
                typo_token()
            ),
            "checksum",
        ),
        (
            format!(
                "relay = \"r\"\nrelay_fingerprint = \"{FINGERPRINT}\"\ntoken = \"{}\"",
                token()
            ),
            "write HOST:PORT",
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
                "relay = \"r:1\"\nrelay_fingerprint = \"{FINGERPRINT}\"\ntoken = \"{}\"\ntoken_env = \"X\"",
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
fn only_an_openssh_sha256_fingerprint_is_taken() {
    let with = |fingerprint: &str| {
        parse(&format!(
            "relay = \"r:1\"\nrelay_fingerprint = {fingerprint:?}\ntoken = \"{}\"",
            token()
        ))
    };
    assert!(with(FINGERPRINT).is_ok());
    assert!(with("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_ok());
    for bad in [
        "SHA256:nope",
        "SHA256:",
        "SHA256:abc",
        // Padded, as base64 tools print it: OpenSSH leaves the `=` off.
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        // One character short, one too many, a character outside base64.
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF",
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFUU",
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF!",
        // URL-safe base64 is not what OpenSSH prints.
        "SHA256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",
        "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        "MD5:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        " SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
    ] {
        let err = with(bad).expect_err(bad);
        assert!(
            err.contains("43 base64 characters") && err.contains("`postern-relay fingerprint`"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn an_unset_payload_variable_is_refused_like_an_unset_secret_env() {
    let with = |sub: &str| {
        jwt_connection(&format!(
            "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\npayload = {{ sub = \"{sub}\" }}"
        ))
    };
    parse(&with("{{env.HMAC}}")).expect("a set variable loads");
    let err = parse(&with("svc-{{env.NOT_SET_ANYWHERE}}")).expect_err("unset");
    assert_eq!(
        err,
        "connections.a: auth.payload: payload.sub: the template {{env.NOT_SET_ANYWHERE}} needs \
         the environment variable NOT_SET_ANYWHERE, but it is not set"
    );
    // So `connection add` notes it as not checked in this shell, as it does `secret_env`.
    assert!(is_unset_variable(&err), "{err}");
}

/// A secret's or a key's variable set to bytes that are not UTF-8 is said to be so, not
/// "not set", and is no problem of this shell alone (`is_unset_variable`).
#[test]
fn a_secret_variable_that_is_not_utf8_is_said_to_be_set() {
    let latin1 = |name: &str| match name {
        "LATIN1" => Err(std::env::VarError::NotUnicode(
            std::os::unix::ffi::OsStringExt::from_vec(b"caf\xe9".to_vec()),
        )),
        _ => Ok("passphrase-or-secret-of-32-bytes".to_owned()),
    };
    for (auth, what) in [
        (
            "algorithm = \"HS256\"\nsecret_env = \"LATIN1\"",
            "auth.secret",
        ),
        (
            "algorithm = \"ES256\"\nprivate_key_env = \"LATIN1\"",
            "auth.private_key",
        ),
        (
            "algorithm = \"ES256\"\nprivate_key = \"x\"\nprivate_key_passphrase_env = \"LATIN1\"",
            "auth.private_key_passphrase",
        ),
    ] {
        let file = ConfigFile::parse(&jwt_connection(auth)).expect("parses");
        let err = AgentConfig::resolve(file, Path::new("/nonexistent"), &latin1)
            .expect_err("not UTF-8")
            .to_string();
        assert!(
            err.contains(&format!(
                "{what}: environment variable LATIN1 is set but is not valid UTF-8"
            )),
            "{err}"
        );
        assert!(!err.contains("not set"), "{err}");
    }
}

#[test]
fn every_problem_of_one_connection_is_listed_at_once() {
    let err = parse(&base(
        "[connections.a]\nbase_uri = \"ftp://x\"\ntimeout = \"0s\"\n\
         rate_limit = { requests = 0, per = \"soon\" }\nmax_wait = \"2h\"\nmax_concurrent_calls = 0\n\
         max_header_bytes = 10\ntest = { method = \"G E T\", path = \"health\", expect_status = 9 }\n\
         tls = { client_cert_file = \"c.pem\" }\n\
         [connections.a.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"RS256\"\nprivate_key_file = \"missing.pem\"\n\
         lifetime = \"forever\"\nreuse_for = \"30s\"\npayload = { sub = \"{{env.UNSET_A}}-{{env.UNSET_B}}\" }\n\
         [connections.a.auth.exchange]\ntoken_url = \"ftp://idp\"\n",
    ))
    .expect_err("many problems");
    let expected = [
        "base_uri \"ftp://x\" must be an http:// or https:// URL",
        "timeout must be more than zero",
        "cannot read /nonexistent/missing.pem",
        "auth.lifetime \"forever\"",
        "auth.payload: payload.sub: the template {{env.UNSET_A}} needs",
        "auth.payload: payload.sub: the template {{env.UNSET_B}} needs",
        "auth.exchange.token_url \"ftp://idp\"",
        "auth.reuse_for applies to direct bearer JWTs",
        "rate_limit.requests must be at least 1",
        "rate_limit.per \"soon\"",
        "max_wait must be at most 1h",
        "test.method \"G E T\" is not an HTTP method",
        "test.path \"health\" must start with /",
        "test.expect_status 9 is not an HTTP status",
        "tls: client_cert_file and client_key_file go together",
        "max_concurrent_calls must be at least 1",
        "max_header_bytes must be between 1024",
    ];
    assert!(
        err.starts_with(&format!("{} problems:", expected.len())),
        "{err}"
    );
    for problem in expected {
        assert!(
            err.contains(&format!("- connections.a: {problem}")),
            "{problem}: {err}"
        );
    }
}

#[test]
fn a_key_that_does_not_fit_its_algorithm_is_named_beside_other_problems() {
    let err = parse(&jwt_connection(
        "algorithm = \"ES256\"\nprivate_key_env = \"HMAC\"\nlifetime = \"never\"",
    ))
    .expect_err("two problems");
    assert!(
        err.starts_with("2 problems:") && err.contains("auth.lifetime \"never\""),
        "{err}"
    );
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

fn jwt_connection(auth: &str) -> String {
    base(&format!(
        "[connections.a]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.a.auth]\ntype = \"jwt_bearer\"\n{auth}\n"
    ))
}

fn jwt_of(cfg: &AgentConfig) -> Arc<JwtBearer> {
    match &cfg.connection("a").expect("connection a").auth {
        Auth::JwtBearer(jwt) => jwt.clone(),
        Auth::None => panic!("expected jwt_bearer"),
    }
}

fn claims_of(jwt: &JwtBearer) -> serde_json::Value {
    use base64::Engine;
    let token = jwt
        .signer
        .sign(1_700_000_000, &|_| Err(std::env::VarError::NotPresent))
        .expect("signs");
    let part = token.split('.').nth(1).expect("payload part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

#[test]
fn exchange_settings_parse_with_their_defaults() {
    let cfg = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\nlifetime = \"5m\"\npayload = { iss = \"x\" }\n[connections.a.auth.exchange]\ntoken_url = \"https://idp.example/token\"\nparams = { scope = \"api\" }",
    ))
    .expect("valid");
    let jwt = jwt_of(&cfg);
    let x = jwt.exchange.as_ref().expect("exchange");
    assert_eq!(x.grant_type, JWT_BEARER_GRANT);
    assert_eq!(x.body, BodyEncoding::Form);
    assert!(!x.client_assertion);
    assert_eq!(x.default_lifetime, Duration::from_secs(600));
    assert_eq!(x.params["scope"], "api");
    assert_eq!(x.token_url.as_str(), "https://idp.example/token");

    let cfg = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\npayload = { exp = \"{{now + 60}}\" }\n[connections.a.auth.exchange]\ntoken_url = \"https://login.example/t\"\nclient_assertion = true\nbody = \"json\"\ndefault_lifetime = \"1h\"",
    ))
    .expect("valid");
    let jwt = jwt_of(&cfg);
    let x = jwt.exchange.as_ref().expect("exchange");
    assert_eq!(x.grant_type, "client_credentials");
    assert_eq!(x.body, BodyEncoding::Json);
    assert_eq!(x.default_lifetime, Duration::from_secs(3600));
}

#[test]
fn lifetime_adds_iat_and_exp_only_when_absent() {
    let cfg = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\nlifetime = \"20m\"\npayload = { iss = \"x\" }",
    ))
    .expect("valid");
    let claims = claims_of(&jwt_of(&cfg));
    assert_eq!(claims["iat"], serde_json::json!(1_700_000_000u64));
    assert_eq!(claims["exp"], serde_json::json!(1_700_001_200u64));
    let cfg = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\nlifetime = \"20m\"\npayload = { exp = \"{{now + 60}}\" }",
    ))
    .expect("valid");
    let claims = claims_of(&jwt_of(&cfg));
    assert_eq!(
        claims["exp"],
        serde_json::json!(1_700_000_060u64),
        "an explicit exp wins"
    );
    assert_eq!(claims["iat"], serde_json::json!(1_700_000_000u64));
}

#[test]
fn base64_secrets_sign_with_the_decoded_bytes() {
    use base64::Engine;
    let raw = [0xA5u8; 32];
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let cfg = parse(&jwt_connection(&format!(
        "algorithm = \"HS256\"\nsecret = \"{encoded}\"\nsecret_encoding = \"base64\"\npayload = {{ iss = \"x\" }}"
    )))
    .expect("valid");
    let token = jwt_of(&cfg)
        .signer
        .sign(1_700_000_000, &|_| Err(std::env::VarError::NotPresent))
        .expect("signs");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims::<&str>(&[]);
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(&raw),
        &validation,
    )
    .expect("verifies with the decoded secret");
}

#[test]
fn jwt_options_refuse_what_users_get_wrong() {
    let hs = "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\n";
    let x = "[connections.a.auth.exchange]\ntoken_url = \"https://idp.example/token\"\n";
    let cases = [
        (format!("{hs}secret_encoding = \"hex\""), "secret_encoding \"hex\": expected \"text\" or \"base64\""),
        ("algorithm = \"HS256\"\nsecret = \"no!base64\"\nsecret_encoding = \"base64\"".to_owned(), "not valid base64"),
        ("algorithm = \"HS256\"\nsecret = \" \"\nsecret_encoding = \"base64\"".to_owned(), "the secret is empty"),
        (format!("{hs}lifetime = \"soon\""), "auth.lifetime \"soon\""),
        (format!("{hs}reuse_for = \"30s\""), "reuse_for needs an exp claim"),
        (format!("{hs}reuse_for = \"30s\"\nlifetime = \"5m\"\n{x}"), "reuse_for applies to direct bearer"),
        (format!("{hs}{x}params = {{ assertion = \"x\" }}"), "params.assertion is set by postern"),
        (format!("{hs}[connections.a.auth.exchange]\ntoken_url = \"ftp://idp\""), "http:// or https://"),
        (format!("{hs}[connections.a.auth.exchange]\ntoken_url = \"idp.internal:8080/token\""), "auth.exchange.token_url \"idp.internal:8080/token\" has no scheme: write it as a URL (did you mean \"http://idp.internal:8080/token\""),
        (format!("{hs}{x}body = \"xml\""), "unknown variant `xml`"),
        (format!("{hs}{x}default_lifetime = \"0s\""), "default_lifetime must be more than zero"),
        (format!("{hs}{x}tokenurl = \"x\""), "unknown field"),
        (format!("{hs}{x}client_auth = \"basic\"\nparams = {{ client_id = \"a\" }}"), "client_auth = \"basic\" needs auth.exchange.params.client_secret"),
        (format!("{hs}{x}client_auth = \"basic\"\nclient_assertion = true\nparams = {{ client_id = \"a\", client_secret = \"b\" }}"), "two ways to authenticate the client"),
        (format!("{hs}{x}client_auth = \"header\""), "unknown variant `header`"),
        ("algorithm = \"ES256\"\nprivate_key_env = \"HMAC\"\nsecret_encoding = \"base64\"".to_owned(), "remove secret*"),
        ("algorithm = \"ES256\"\nprivate_key_env = \"HMAC\"\nprivate_key_passphrase_env = \"NOPE\"".to_owned(), "NOPE is not set"),
        ("algorithm = \"ES256\"\nprivate_key_env = \"HMAC\"\ncertificate_file = \"/nonexistent/cert.pem\"".to_owned(), "auth.certificate_file /nonexistent/cert.pem"),
    ];
    for (auth, expected) in cases {
        let text = jwt_connection(&auth);
        let err = parse(&text).expect_err(&text);
        assert!(
            err.contains(expected),
            "{auth}\n→ {err}\n(expected {expected:?})"
        );
    }
}

#[test]
fn rate_limits_parse_and_refuse_nonsense() {
    let conn = |extra: &str| {
        base(&format!(
            "[connections.a]\nbase_uri = \"http://x\"\n{extra}\n"
        ))
    };
    let cfg = parse(&conn(
        "rate_limit = { requests = 10, per = \"1m\", burst = 3 }\nmax_wait = \"2s\"",
    ))
    .expect("valid");
    let a = cfg.connection("a").expect("a");
    assert_eq!(
        a.rate_limit,
        Some(RateLimit {
            requests: 10,
            per: Duration::from_secs(60),
            burst: 3
        })
    );
    assert_eq!(a.max_wait, Duration::from_secs(2));
    let cfg = parse(&conn("rate_limit = { requests = 5 }")).expect("valid");
    let a = cfg.connection("a").expect("a");
    assert_eq!(
        a.rate_limit,
        Some(RateLimit {
            requests: 5,
            per: Duration::from_secs(1),
            burst: 5
        })
    );
    assert_eq!(a.max_wait, Duration::from_secs(5));
    for (extra, expected) in [
        (
            "rate_limit = { requests = 0 }",
            "requests must be at least 1",
        ),
        (
            "rate_limit = { requests = 1, burst = 0 }",
            "burst must be at least 1",
        ),
        (
            "rate_limit = { requests = 1, per = \"0s\" }",
            "per must be more than zero",
        ),
        (
            "rate_limit = { requests = 1, window = \"1s\" }",
            "unknown field",
        ),
        ("max_wait = \"later\"", "max_wait \"later\""),
    ] {
        let err = parse(&conn(extra)).expect_err(extra);
        assert!(err.contains(expected), "{extra} → {err}");
    }
}

#[test]
fn the_readme_jwt_examples_parse() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("\n## JWT bearer auth\n")
        .expect("README has the JWT section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert!(blocks.len() >= 7, "found {} toml blocks", blocks.len());
    for block in blocks {
        let text = base(block);
        ConfigFile::parse(&text)
            .unwrap_or_else(|e| panic!("README example does not parse: {e}\n{block}"));
    }
}

#[test]
fn call_limits_default_and_refuse_nonsense() {
    let conn = |extra: &str| {
        base(&format!(
            "[connections.a]\nbase_uri = \"http://x\"\n{extra}\n"
        ))
    };
    let cfg = parse(&conn("")).expect("valid");
    assert_eq!(
        cfg.connection("a").expect("a").limits,
        CallLimits::default()
    );
    let cfg = parse(&conn("max_header_bytes = 2048")).expect("valid");
    assert_eq!(
        cfg.connection("a").expect("a").limits.max_header_bytes,
        2048
    );
    for (extra, expected) in [
        ("max_header_bytes = 100", "max_header_bytes must be between"),
        (
            "max_header_bytes = 1000000",
            "max_header_bytes must be between",
        ),
        (
            "max_concurrent_calls = 0",
            "max_concurrent_calls must be at least 1",
        ),
    ] {
        let err = parse(&conn(extra)).expect_err(extra);
        assert!(err.contains(expected), "{extra} → {err}");
    }
}

#[test]
fn metrics_listen_is_loopback_only() {
    let cfg = parse(&base("metrics_listen = \"127.0.0.1:9464\"")).expect("valid");
    assert_eq!(
        cfg.metrics_listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    assert!(parse(&base("metrics_listen = \"[::1]:9464\"")).is_ok());
    assert_eq!(parse(&base("")).expect("valid").metrics_listen, None);
    for (value, expected) in [
        ("0.0.0.0:9464", "must be a loopback address"),
        ("10.1.2.3:9464", "must be a loopback address"),
        ("localhost", "expected 127.0.0.1:PORT"),
    ] {
        let err = parse(&base(&format!("metrics_listen = \"{value}\""))).expect_err(value);
        assert!(err.contains(expected), "{value} → {err}");
    }
}

#[test]
fn the_default_socket_is_where_the_service_puts_it_for_its_own_user() {
    let at = |uid, xdg: Option<&str>, owner: Option<u32>| {
        default_socket(uid, xdg.map(Into::into), || owner)
    };
    let service = PathBuf::from("/run/postern/agent.sock");
    assert_eq!(at(0, Some("/run/user/0"), None), service);
    assert_eq!(
        at(1000, Some("/run/user/1000"), Some(1000)),
        PathBuf::from("/run/user/1000/postern/agent.sock")
    );
    // `sudo -u postern postern status`: no XDG_RUNTIME_DIR, /run/postern is postern's.
    assert_eq!(at(998, None, Some(998)), service);
    assert_eq!(
        at(1000, None, Some(998)),
        PathBuf::from("/tmp/postern-1000/agent.sock")
    );
    assert_eq!(
        at(1000, None, None),
        PathBuf::from("/tmp/postern-1000/agent.sock")
    );
}

#[test]
fn a_relay_port_out_of_range_is_named_as_such() {
    use crate::config::relay_problem;
    assert_eq!(relay_problem("relay.example.com:2222"), None);
    assert_eq!(relay_problem("[::1]:22"), None);
    for bad in [
        "relay.example.com:0",
        "relay:99999",
        "relay:123456789012345678901",
    ] {
        let problem = relay_problem(bad).unwrap_or_default();
        assert!(
            problem.contains("out of range (1–65535)"),
            "{bad}: {problem}"
        );
    }
    for bad in ["relay.example.com", "relay:", "relay:ssh", "relay:-1"] {
        let problem = relay_problem(bad).unwrap_or_default();
        assert!(problem.contains("write HOST:PORT"), "{bad}: {problem}");
    }
}

#[test]
fn a_relay_that_is_not_host_and_port_says_which_form_is_expected() {
    use crate::config::relay_problem;
    for good in [
        "10.0.0.1:22",
        "[2001:db8::1]:2222",
        "relay-1.example.com:2222",
    ] {
        assert_eq!(relay_problem(good), None, "{good}");
    }
    for (bad, why) in [
        (
            "http://127.0.0.1:22222",
            "has a URL scheme, but the relay is reached over SSH (did you mean \"127.0.0.1:22222\"?)",
        ),
        (
            "ssh://relay.example.com:2222/",
            "did you mean \"relay.example.com:2222\"?",
        ),
        ("ssh://x", "has a URL scheme"),
        ("relay.example.com:2222/ssh", "holds a path"),
        ("user@relay.example.com:2222", "holds a user name"),
        ("relay.example.com :2222", "holds a space"),
        ("", "is empty"),
        (":2222", "has no host before the port"),
        ("[]:2222", "something other than an IPv6 address"),
        ("[::1:2222", "never closes"),
        ("::1:2222", "IPv6 address without brackets"),
        ("[::1]", "has no port number"),
    ] {
        let problem = relay_problem(bad).unwrap_or_default();
        assert!(
            problem.contains(why)
                && problem.contains("write HOST:PORT, such as \"relay.example.com:2222\""),
            "{bad}: {problem}"
        );
    }
}

#[test]
fn the_mask_connection_show_prints_is_not_taken_as_a_secret() {
    let err = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret = \"***\"\npayload = { iss = \"p\", nested = { password = \"***\" } }\n\
         headers = { token = \"***\" }\n\
         [connections.a.auth.exchange]\ntoken_url = \"https://idp/t\"\nparams = { client_id = \"***\", client_secret = \"***\" }",
    ))
    .expect_err("masks are refused");
    let mask =
        "is \"***\", the mask `postern connection show` prints in place of a secret, not a secret";
    for place in [
        "connections.a: auth.secret ",
        "connections.a: auth.payload.nested.password ",
        "connections.a: auth.headers.token ",
        "connections.a: auth.exchange.params.client_secret ",
    ] {
        assert!(err.contains(&format!("{place}{mask}")), "{place}: {err}");
    }
    // Only the keys `connection show` masks: a client_id may be anything.
    assert!(!err.contains("client_id"), "{err}");
    let err = parse(&jwt_connection(
        "algorithm = \"RS256\"\nprivate_key = \" *** \"\npayload = { iss = \"p\" }",
    ))
    .expect_err("a masked key");
    assert!(err.contains(&format!("auth.private_key {mask}")), "{err}");
    let token =
        format!("relay = \"r:1\"\nrelay_fingerprint = \"{FINGERPRINT}\"\ntoken = \"***\"\n");
    let err = parse(&token).expect_err("a masked token");
    assert!(err.contains(&format!("token {mask}")), "{err}");
}

#[test]
fn every_payload_and_exchange_problem_is_listed() {
    let err = parse(&jwt_connection(
        "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\n\
         payload = { sub = \"{{nw}}-{{uid}}\", aud = [\"{{env.}}\"], exp = \"x-{{now}}\", iat = \"{{nbf}}\" }\n\
         [connections.a.auth.exchange]\ntoken_url = \"ftp://idp\"\ndefault_lifetime = \"0s\"\n\
         params = { assertion = \"a\", grant_type = \"g\", scope = \"s\" }",
    ))
    .expect_err("many problems");
    let expected = [
        "auth.payload: payload.sub: unknown template \"{{nw}}\"",
        "auth.payload: payload.sub: unknown template \"{{uid}}\"",
        "auth.payload: payload.aud[0]: unknown template \"{{env.}}\"",
        "auth.payload: payload.exp must be a number of seconds since 1970",
        "auth.payload: payload.iat: unknown template \"{{nbf}}\"",
        "auth.exchange.token_url \"ftp://idp\" must be an http:// or https:// URL",
        "auth.exchange.params.assertion is set by postern",
        "auth.exchange.params.grant_type is set by postern",
        "auth.exchange.default_lifetime must be more than zero",
    ];
    for problem in expected {
        assert!(
            err.contains(&format!("- connections.a: {problem}")),
            "{problem}: {err}"
        );
    }
    assert!(
        err.starts_with(&format!("{} problems:", expected.len())),
        "{err}"
    );
}

#[test]
fn reuse_for_must_be_shorter_than_the_lifetime() {
    let with = |auth: &str| {
        parse(&jwt_connection(&format!(
            "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\n{auth}"
        )))
    };
    with("lifetime = \"5m\"\nreuse_for = \"1m\"\npayload = { iss = \"p\" }")
        .expect("reuse_for below the lifetime");
    with("reuse_for = \"30s\"\npayload = { exp = \"{{now + 60}}\" }").expect("below payload.exp");
    for (lifetime_or_exp, reuse_for, named) in [
        ("lifetime = \"1m\"", "5m", "auth.lifetime \"1m\""),
        ("lifetime = \"1m\"", "1m", "auth.lifetime \"1m\""),
        (
            "lifetime = \"1h\"\npayload = { exp = \"{{plus currentTimeSeconds 90}}\" }",
            "2m",
            "payload.exp = now + 90 s",
        ),
    ] {
        let auth = format!("{lifetime_or_exp}\nreuse_for = \"{reuse_for}\"");
        let err = with(&auth).expect_err(&auth);
        assert!(
            err.contains(&format!(
                "auth.reuse_for \"{reuse_for}\" must be shorter than the JWT's lifetime ({named})"
            )) && err.contains("no JWT would ever be reused"),
            "{auth}: {err}"
        );
    }
}

#[test]
fn a_secret_file_of_raw_bytes_points_to_secret_encoding() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("postern-rawsecret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join("hmac.bin");
    std::fs::write(&secret, [0xff, 0xfe, 0x00, 0x80, 0x41]).expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = base(&format!(
        "[connections.a]\nbase_uri = \"http://127.0.0.1:1/api\"\n[connections.a.auth]\n\
         type = \"jwt_bearer\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\npayload = {{ iss = \"p\" }}\n",
        secret.display()
    ));
    let err = parse(&text).expect_err("not text");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        err.contains(&format!(
            "auth.secret_file {} is not UTF-8 text: for a secret of raw bytes",
            secret.display()
        )) && err.contains("secret_encoding = \"base64\""),
        "{err}"
    );
    assert!(!err.contains("stream did not contain valid UTF-8"), "{err}");
}

#[test]
fn a_test_is_refused_the_methods_a_call_is() {
    for method in ["CONNECT", "trace", "TRACK", "track"] {
        let err = parse(&base(&format!(
            "[connections.a]\nbase_uri = \"http://x\"\ntest = {{ method = \"{method}\", path = \"/h\" }}\n"
        )))
        .expect_err("refused");
        assert!(
            err.contains("connections.a: test.method: ") && err.contains("not relayed"),
            "{method}: {err}"
        );
    }
}

/// Writers at once (two admins, or a tool running tasks side by side) each leave a whole
/// file: none renames another's half-written temp file into place, or fails for it.
#[test]
fn writes_at_once_never_leave_a_mixed_or_short_file() {
    let dir = std::env::temp_dir().join(format!("postern-write-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("agent.toml");
    const LEN: usize = 128 * 1024;
    let writers: Vec<_> = (b'a'..=b'f')
        .map(|letter| {
            let path = path.clone();
            std::thread::spawn(move || {
                let text = vec![letter; LEN];
                (0..50)
                    .filter_map(|_| write_private_bytes(&path, &text, None).err())
                    .map(|e| e.to_string())
                    .next()
            })
        })
        .collect();
    let (mut reads, mut bad) = (0, Vec::new());
    while !writers.iter().all(|w| w.is_finished()) {
        if let Ok(read) = std::fs::read(&path) {
            reads += 1;
            if read.len() != LEN || read.iter().any(|b| *b != read[0]) {
                bad.push(read.len());
            }
        }
    }
    let failed: Vec<_> = writers
        .into_iter()
        .filter_map(|w| w.join().expect("writer"))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    bad.truncate(10);
    assert!(
        bad.is_empty(),
        "broken files in {reads} reads, lengths {bad:?}…"
    );
}

/// Anyone who can read the folder can hold its lock: a write waits for it, then gives up
/// with a reason rather than hang.
#[test]
fn a_write_waits_for_the_folders_lock_but_not_for_ever() {
    let dir = std::env::temp_dir().join(format!("postern-write-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("agent.toml");
    let held = std::fs::File::open(&dir).expect("folder");
    held.lock().expect("lock");
    // Let go a moment later: the write waited, and went through.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    write_private(&path, "a = 1\n").expect("written once the lock was free");
    release.join().expect("release");

    let held = std::fs::File::open(&dir).expect("folder");
    held.lock().expect("lock");
    let started = std::time::Instant::now();
    let refused = write_private(&path, "a = 2\n").expect_err("held for ever");
    assert!(started.elapsed() >= WRITE_LOCK_WAIT, "{refused}");
    assert!(
        refused.to_string().contains("still holds its lock"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).ok().as_deref(),
        Some("a = 1\n")
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_base_uri_without_a_scheme_says_which_to_add() {
    for uri in ["127.0.0.1:8080/x", "localhost:8080", "erp.internal/api"] {
        let text = base(&format!("[connections.a]\nbase_uri = \"{uri}\"\n"));
        let err = parse(&text).expect_err(uri);
        assert!(
            err.contains(&format!(
                "connections.a: base_uri \"{uri}\" has no scheme: write it as a URL (did you mean \"http://{uri}\" or \"https://{uri}\"?)"
            )),
            "{err}"
        );
    }
    // Quoted as every URL is: without what stands before its `@`.
    let err =
        parse(&base("[connections.a]\nbase_uri = \"svc:s3cret@h:80/x\"\n")).expect_err("no scheme");
    assert!(
        err.contains("\"http://…@h:80/x\"") && !err.contains("s3cret"),
        "{err}"
    );
    // A scheme given is not added to.
    let err = parse(&base("[connections.a]\nbase_uri = \"ftp://x\"\n")).expect_err("ftp");
    assert!(!err.contains("did you mean"), "{err}");
}

#[test]
fn an_exchange_assertion_needs_exp_and_a_direct_jwt_loads_without() {
    let hs = "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\npayload = { iss = \"x\" }\n";
    let x = "[connections.a.auth.exchange]\ntoken_url = \"https://idp.example/token\"\n";
    let err = parse(&jwt_connection(&format!("{hs}{x}"))).expect_err("no exp");
    assert!(
        err.contains("connections.a: auth.exchange: the assertion would have no exp claim, which RFC 7523 §3 requires"),
        "{err}"
    );
    // One problem, not two, when the lifetime that would give it is itself wrong.
    let err = parse(&jwt_connection(&format!("{hs}lifetime = \"soon\"\n{x}"))).expect_err("bad");
    assert!(!err.contains("no exp claim"), "{err}");
    parse(&jwt_connection(&format!("{hs}lifetime = \"5m\"\n{x}"))).expect("a lifetime gives exp");
    // Direct: loads (warned of in the log, as a credential that never expires).
    parse(&jwt_connection(hs)).expect("a direct JWT without exp loads");
}
