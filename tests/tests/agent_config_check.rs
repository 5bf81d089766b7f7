//! `postern config check` (and `reload`, which parses the config to find the agent) on
//! configs the real binary must refuse: without quoting secrets, and naming every problem.

use std::path::Path;

use anyhow::Result;
use postern_tests::harness::{
    Bins, OFFLINE_FINGERPRINT, agent_cli, offline_agent_config, output_text, unknown_token,
};
use postern_tests::pki;
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

/// `postern ARGS --config CONFIG`: its exit code and stdout+stderr.
fn run(config: &Path, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = agent_cli(&bins(), config, args)?;
    Ok((out.status.code(), output_text(&out)))
}

#[test]
fn toml_errors_give_line_and_column_and_never_the_token() -> Result<()> {
    let dir = TempDir::new("cfgcheck-leak")?;
    let token = unknown_token();
    let head = format!("relay = \"127.0.0.1:1\"\nrelay_fingerprint = \"{OFFLINE_FINGERPRINT}\"\n");
    // The token's body: what must not show, even without its `pst_` prefix.
    let body = &token[4..];
    for (name, text, secret, position) in [
        (
            "unterminated.toml",
            format!("{head}token = \"{token}\n"),
            body,
            format!("line 3, column {}", 10 + token.len()),
        ),
        (
            // 14 digits: longer than any run of digits in the temp folder's path (pid,
            // nanoseconds), which the output names, so only the value itself can match.
            "wrong-type.toml",
            format!("{head}token = 73591846203957\n"),
            "73591846203957",
            "line 3, column 9".to_owned(),
        ),
        (
            "secret.toml",
            format!(
                "{head}token = \"{token}\"\n[connections.c]\nbase_uri = \"http://h\"\n\
                 auth = {{ type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"s3cr3t-hmac-key\n"
            ),
            "s3cr3t-hmac-key",
            "line 6, column".to_owned(),
        ),
    ] {
        let config = dir.write_private(name, &text)?;
        for args in [&["config", "check"][..], &["reload"]] {
            let (code, said) = run(&config, args)?;
            assert_eq!(code, Some(1), "{args:?} {name}: {said}");
            assert!(
                said.contains("TOML parse error") && said.contains(&position),
                "{args:?} {name}: {said}"
            );
            assert!(!said.contains(secret), "{args:?} {name} shows it: {said}");
        }
    }
    Ok(())
}

#[test]
fn a_wrong_type_says_what_was_expected_without_the_value() -> Result<()> {
    let dir = TempDir::new("cfgcheck-type")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.c]\nbase_uri = \"http://h\"\nmax_concurrent_calls = \"pst_notanumber\"\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(
            "line 6, column 24: max_concurrent_calls: invalid type: string, expected u32"
        ),
        "{said}"
    );
    assert!(!said.contains("notanumber"), "{said}");
    Ok(())
}

/// A connection presenting `cert` and `key` (files in the config's folder) to a server
/// the test CA signed.
fn with_client_certificate(cert: &str, key: &str) -> String {
    offline_agent_config(
        "127.0.0.1:1",
        &format!(
            "[connections.m]\nbase_uri = \"https://127.0.0.1:1\"\n\
             tls = {{ ca_file = \"ca.pem\", client_cert_file = \"{cert}\", client_key_file = \"{key}\" }}\n"
        ),
    )
}

#[test]
fn a_client_certificate_run_would_refuse_fails_the_check_by_name() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cfgcheck-mtls")?;
    pki::make_pki(dir.path())?;
    // `x509 -req` without extensions makes a v1 certificate, which webpki refuses.
    pki::openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "v1.pem",
            "-days",
            "2",
        ],
    )?;
    std::fs::set_permissions(
        dir.path().join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let good = dir.write_private(
        "good.toml",
        &with_client_certificate("client.pem", "client.key"),
    )?;
    let (code, said) = run(&good, &["config", "check"])?;
    assert_eq!(code, Some(0), "{said}");
    for (name, cert, key, expected) in [
        (
            "v1.toml",
            "v1.pem",
            "client.key",
            "the client certificate is not usable: it is an X.509 v1 certificate",
        ),
        (
            "mismatch.toml",
            "client.pem",
            "server.key",
            "server.key: the client key does not belong to the client certificate",
        ),
    ] {
        let config = dir.write_private(name, &with_client_certificate(cert, key))?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(1), "{name}: {said}");
        assert!(
            said.contains("connections.m: tls.client_") && said.contains(expected),
            "{name}: {said}"
        );
        assert!(!said.contains("peer certificate"), "{name}: {said}");
    }
    Ok(())
}

#[test]
fn settings_that_fail_every_call_or_test_fail_the_check() -> Result<()> {
    let dir = TempDir::new("cfgcheck-calls")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.signed]\nbase_uri = \"http://127.0.0.1:1\"\n\
             auth = { type = \"jwt_bearer\", algorithm = \"HS256\", secret = \"0123456789abcdef0123456789abcdef\", \
             payload = { sub = \"{{env.POSTERN_TEST_NOT_SET_ANYWHERE}}\" } }\n\
             [connections.tested]\nbase_uri = \"http://127.0.0.1:1\"\n\
             test = { path = \"/../secret.txt\" }\n",
        ),
    )?;
    let out = postern_tests::harness::agent_command(&bins(), &config, &["config", "check"])
        .env_remove("POSTERN_TEST_NOT_SET_ANYWHERE")
        .output()?;
    let said = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "connections.signed: auth.payload: payload.sub: the template \
             {{env.POSTERN_TEST_NOT_SET_ANYWHERE}} needs the environment variable \
             POSTERN_TEST_NOT_SET_ANYWHERE, but it is not set"
        ) && said.contains(
            "connections.tested: test.path \"/../secret.txt\": the path may not hold '.' or '..' segments"
        ),
        "{said}"
    );
    Ok(())
}

#[test]
fn every_problem_of_a_connection_is_listed_in_one_run() -> Result<()> {
    let dir = TempDir::new("cfgcheck-all")?;
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config(
            "127.0.0.1:1",
            "[connections.m]\nbase_uri = \"http//erp.internal\"\ntimeout = \"0s\"\n\
             rate_limit = { requests = 0 }\ntest = { method = \"G E T\", path = \"health\" }\n\
             max_concurrent_calls = 0\n\
             [connections.m.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\n\
             private_key_file = \"keys/missing.pem\"\n",
        ),
    )?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(1), "{said}");
    for problem in [
        "7 problems:",
        "connections.m: base_uri \"http//erp.internal\"",
        "connections.m: timeout must be more than zero",
        "keys/missing.pem",
        "connections.m: rate_limit.requests must be at least 1",
        "connections.m: test.method \"G E T\" is not an HTTP method",
        "connections.m: test.path \"health\" must start with /",
        "connections.m: max_concurrent_calls must be at least 1",
    ] {
        assert!(said.contains(problem), "{problem}: {said}");
    }
    Ok(())
}

#[test]
fn a_wrong_value_in_an_auth_table_is_placed_at_its_key() -> Result<()> {
    let dir = TempDir::new("cfgcheck-auth")?;
    for (name, auth, expected) in [
        (
            "lifetime.toml",
            "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\nlifetime = 300\n",
            "line 10, column 12: lifetime: invalid type: integer, expected a string",
        ),
        (
            "exchange.toml",
            "algorithm = \"HS256\"\nsecret_env = \"HMAC\"\n[connections.u.auth.exchange]\n\
             token_url = \"https://idp.internal/token\"\ntokne_url = \"x\"\n",
            "line 12, column 1: unknown field `tokne_url`",
        ),
    ] {
        let config = dir.write_private(
            name,
            &offline_agent_config(
                "127.0.0.1:1",
                &format!(
                    "[connections.u]\nbase_uri = \"http://h\"\n[connections.u.auth]\n\
                     type = \"jwt_bearer\"\n{auth}"
                ),
            ),
        )?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(1), "{name}: {said}");
        assert!(said.contains(expected), "{name}: {said}");
    }
    Ok(())
}

/// A config without connections checks out as such: before 2026-12-07 the line ended
/// "0 connection(s): ", with nothing after it.
#[test]
fn a_config_without_connections_says_it_has_none() -> Result<()> {
    let dir = TempDir::new("cfgcheck-none")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let (code, said) = run(&config, &["config", "check"])?;
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.trim_end()
            .ends_with("ok — relays 127.0.0.1:1, no connections yet"),
        "{said}"
    );
    Ok(())
}

/// An RFC 7523 assertion must carry `exp` (§3), and identity providers refuse one without:
/// `config check` refuses it, where before 2026-12-07 it said `ok` and the first call got
/// a 502 from the token endpoint's refusal. A direct JWT without one is only warned of.
#[test]
fn an_exchange_whose_assertion_has_no_exp_fails_the_check() -> Result<()> {
    let dir = TempDir::new("cfgcheck-no-exp")?;
    let (key, _) = pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &key)?;
    let connection = |auth_extra: &str, exchange_extra: &str| {
        format!(
            "[connections.erp]\nbase_uri = \"http://127.0.0.1:9/erp\"\n\
             [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\n\
             private_key_file = \"ec.pem\"\n{auth_extra}\
             [connections.erp.auth.exchange]\ntoken_url = \"http://127.0.0.1:9/token\"\n{exchange_extra}"
        )
    };
    let refused = "connections.erp: auth.exchange: the assertion would have no exp claim, which RFC 7523 §3 requires";
    for (name, text) in [
        (
            "plain.toml",
            connection("payload = { iss = \"postern\" }\n", ""),
        ),
        (
            "client-assertion.toml",
            connection(
                "",
                "client_assertion = true\nparams = { client_id = \"c\" }\n",
            ),
        ),
    ] {
        let config = dir.write_private(name, &offline_agent_config("127.0.0.1:1", &text))?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(1), "{name}: {said}");
        assert!(said.contains(refused), "{name}: {said}");
    }
    for (name, auth_extra) in [
        ("lifetime.toml", "lifetime = \"5m\"\n"),
        ("exp.toml", "payload = { exp = \"{{now + 300}}\" }\n"),
    ] {
        let text = connection(auth_extra, "");
        let config = dir.write_private(name, &offline_agent_config("127.0.0.1:1", &text))?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(0), "{name}: {said}");
        assert!(!said.contains("no exp claim"), "{name}: {said}");
    }
    Ok(())
}

/// TOML dates and times have no JSON form: in a payload (at any depth) they would have
/// been signed as toml's private marker object, and in `headers` or `params` called a
/// "map". Each is refused by name with how to write it; `jwt sign` signs nothing.
#[test]
fn toml_dates_in_a_payload_headers_or_params_are_refused_by_name() -> Result<()> {
    let dir = TempDir::new("cfgcheck-dates")?;
    let (key, _) = pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &key)?;
    let connection = |auth_extra: &str, exchange: &str| {
        format!(
            "[connections.erp]\nbase_uri = \"http://127.0.0.1:9/erp\"\n\
             [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\n\
             private_key_file = \"ec.pem\"\nlifetime = \"5m\"\n{auth_extra}{exchange}"
        )
    };
    let payload = "payload = { iss = \"p\", d = 2026-12-01, t = 07:32:00, \
                   nested = { at = [1, 1979-05-27T07:32:00Z] }, exp = 2026-12-01T00:00:00Z }\n";
    let config = dir.write_private(
        "payload.toml",
        &offline_agent_config("127.0.0.1:1", &connection(payload, "")),
    )?;
    let quote = "which JSON has no type for: write it as a quoted string";
    for args in [
        &["config", "check"][..],
        &["jwt", "sign", "--connection", "erp"][..],
    ] {
        let (code, said) = run(&config, args)?;
        assert_eq!(code, Some(1), "{args:?}: {said}");
        for place in [
            "connections.erp: auth.payload.d is a TOML date/time (2026-12-01), ",
            "connections.erp: auth.payload.t is a TOML date/time (07:32:00), ",
            "connections.erp: auth.payload.nested.at[1] is a TOML date/time (1979-05-27T07:32:00Z), ",
        ] {
            assert!(
                said.contains(&format!("{place}{quote}")),
                "{args:?}: {said}"
            );
        }
        // A time claim is refused as it always was: it must be a number.
        assert!(
            said.contains("auth.payload: payload.exp must be a number of seconds since 1970"),
            "{args:?}: {said}"
        );
        assert!(
            !said.contains("toml_private") && !said.contains("eyJ"),
            "{args:?}: {said}"
        );
    }
    for (name, auth_extra, exchange, key) in [
        (
            "headers.toml",
            "headers = { kid = 2026-12-01 }\n",
            "",
            "kid",
        ),
        (
            "params.toml",
            "",
            "[connections.erp.auth.exchange]\ntoken_url = \"http://127.0.0.1:9/token\"\n\
             params = { valid_from = 2026-12-01 }\n",
            "valid_from",
        ),
    ] {
        let config = dir.write_private(
            name,
            &offline_agent_config("127.0.0.1:1", &connection(auth_extra, exchange)),
        )?;
        let (code, said) = run(&config, &["config", "check"])?;
        assert_eq!(code, Some(1), "{name}: {said}");
        assert!(
            said.contains(&format!(
                "{key}: invalid type: TOML date/time, expected a string: write it quoted (\"2026-12-01\")"
            )),
            "{name}: {said}"
        );
        assert!(!said.contains("map"), "{name}: {said}");
    }
    Ok(())
}
