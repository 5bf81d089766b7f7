//! The real `postern`'s config edits refused for what the command line lacks, said in
//! the command line's terms, with the file left as it was.

use std::path::Path;
use std::process::Output;

use anyhow::Result;
use postern_tests::harness::{
    Bins, add_jwt, agent_cli, agent_command, assert_exit, offline_agent_config, offline_init,
    offline_init_command, output_text, stderr, stdout, unknown_token,
};
use postern_tests::temp::TempDir;

fn bins() -> Bins {
    postern_tests::bins!()
}

#[test]
fn jwt_bearer_without_an_algorithm_names_the_option() -> Result<()> {
    let dir = TempDir::new("cli-edit-alg")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "erp",
            "--base-uri",
            "http://127.0.0.1:9",
            "--auth",
            "jwt_bearer",
            "--secret-env",
            "ERP_SECRET",
        ],
    )?;
    assert_eq!(out.status.code(), Some(64), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("--auth jwt_bearer needs --algorithm (HS256, ")
            && !stderr(&out).contains("line"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&config)?, before);

    // An auth type that does not exist is a usage error, with the ones that do.
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "erp",
            "--base-uri",
            "http://h",
            "--auth",
            "jwt",
        ],
    )?;
    assert_exit(&out, 64, "jwt_bearer");
    assert_eq!(std::fs::read_to_string(&config)?, before);
    Ok(())
}

/// No token on stdin is "no access token given", as for `init`, not a malformed token.
#[test]
fn token_set_with_nothing_on_stdin_says_no_token_was_given() -> Result<()> {
    let dir = TempDir::new("cli-edit-token")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    let empty = dir.write_private("empty", "\n")?;
    let from_file = ["token", "set", "--token-file", &empty.to_string_lossy()];
    for args in [&["token", "set"][..], &from_file[..]] {
        let out = agent_cli(&bins(), &config, args)?;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            stderr(&out).contains("no access token given: pass --token-file FILE"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&config)?, before);
    }
    Ok(())
}

#[test]
fn init_with_a_port_out_of_range_says_so() -> Result<()> {
    let dir = TempDir::new("cli-edit-init")?;
    let config = dir.path().join("agent.toml");
    for relay in [
        "127.0.0.1:99999",
        "relay.example.com:0",
        "[::1]:123456789012345678901",
    ] {
        let out = offline_init(&bins(), &config, relay, &unknown_token())?;
        assert_eq!(out.status.code(), Some(1), "{relay}: {}", output_text(&out));
        assert!(
            stderr(&out).contains("is out of range (1–65535)"),
            "{relay}: {}",
            stderr(&out)
        );
        assert!(!config.exists(), "{relay}: nothing written");
    }
    Ok(())
}

/// Run as root, `token set` replaces only a token file the config's owner owns: the
/// config's owner (the service user) must not get root to replace another user's file
/// through `token_file` or a symlink. Its own file, through a symlink too, is replaced.
#[test]
fn token_set_as_root_replaces_only_the_config_owners_files() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    if !postern_tests::harness::is_root() {
        // Only root can make files that belong to someone else.
        println!("SKIPPED token set ownership test: needs root");
        return Ok(());
    }
    const SERVICE: u32 = 65534;
    let dir = TempDir::new("cli-edit-owner")?;
    let d = dir.path();
    let victim = d.join("important");
    std::fs::write(&victim, "root's own\n")?;
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644))?;
    std::os::unix::fs::symlink(&victim, d.join("link"))?;
    let service_dir = d.join("service");
    std::fs::create_dir(&service_dir)?;
    chown(&service_dir, Some(SERVICE), Some(SERVICE))?;
    let own = service_dir.join("token");
    std::fs::write(&own, "old\n")?;
    chown(&own, Some(SERVICE), Some(SERVICE))?;
    std::os::unix::fs::symlink(&own, d.join("own-link"))?;
    let new_token = unknown_token();

    let token_set = |token_file: &str| -> Result<Output> {
        let config = dir.write_private(
            "agent.toml",
            &offline_agent_config("127.0.0.1:1", "").replace(
                "token = ",
                &format!("token_file = {token_file:?}\n# token = "),
            ),
        )?;
        chown(&config, Some(SERVICE), Some(SERVICE))?;
        let token = dir.write_private("new-token", &new_token)?;
        agent_cli(
            &bins(),
            &config,
            &["token", "set", "--token-file", &token.to_string_lossy()],
        )
    };

    let victim_text = victim.to_string_lossy().into_owned();
    // Root's folder, where root's file would be made.
    let new_in_roots = d.join("new").to_string_lossy().into_owned();
    for (token_file, named) in [
        (victim_text.as_str(), victim_text.clone()),
        ("link", victim_text.clone()),
        (new_in_roots.as_str(), new_in_roots.clone()),
    ] {
        let out = token_set(token_file)?;
        let said = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{token_file}: {}",
            output_text(&out)
        );
        assert!(
            said.contains("refusing to write the token")
                && said.contains(&named)
                && said.contains("(uid 0)")
                && said.contains("(uid 65534)"),
            "{token_file}: {said}"
        );
        assert_eq!(std::fs::read_to_string(&victim)?, "root's own\n");
        assert_eq!(std::fs::metadata(&victim)?.mode() & 0o7777, 0o644);
        assert!(!Path::new(&new_in_roots).exists());
    }

    for (token_file, written) in [
        ("own-link", own.clone()),
        ("service/token", own.clone()),
        ("service/new", service_dir.join("new")),
    ] {
        let out = token_set(token_file)?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{token_file}: {}",
            output_text(&out)
        );
        assert_eq!(std::fs::read_to_string(&written)?.trim(), new_token);
        assert_eq!(std::fs::metadata(&written)?.uid(), SERVICE, "{token_file}");
        assert!(std::fs::symlink_metadata(d.join("own-link"))?.is_symlink());
    }
    Ok(())
}

/// Edits at once take turns: each `connection add` reads the config, adds its own and
/// writes, so without turns a later one would write back what it read, without the other.
#[test]
fn edits_at_once_all_land() -> Result<()> {
    let dir = TempDir::new("cli-edit-at-once")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let bins = bins();
    let names: Vec<String> = (0..12).map(|n| format!("c{n}")).collect();
    let children = names
        .iter()
        .map(|name| {
            let base = format!("http://127.0.0.1:9/{name}");
            let args = ["connection", "add", name, "--base-uri", &base];
            agent_command(&bins, &config, &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let text = std::fs::read_to_string(&config)?;
    let lost: Vec<&String> = names
        .iter()
        .filter(|n| !text.contains(&format!("[connections.{n}]")))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}\n{text}");
    Ok(())
}

/// A file toml cannot read is named with its line and column only: toml_edit's own
/// message quotes the line, and a second `token = …` line (a rotation appended instead of
/// replaced) would put the new token on the terminal.
#[test]
fn an_edit_of_a_broken_file_never_shows_its_line() -> Result<()> {
    let dir = TempDir::new("cli-edit-broken")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let second = postern_protocol::SecretToken::generate(
        postern_protocol::SecretKind::AgentToken,
        &[9u8; postern_protocol::token::BODY_LEN],
    );
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!("token = \"{}\"\n", second.expose()));
    std::fs::write(&config, &text)?;
    let show = ["connection", "show", "o"];
    let add = ["connection", "add", "o", "--base-uri", "http://127.0.0.1:9"];
    let new_token = dir.write_private("new-token", &format!("{}\n", second.expose()))?;
    let set = ["token", "set", "--token-file", &new_token.to_string_lossy()];
    for args in [&show[..], &add[..], &set[..]] {
        let out = agent_command(&bins(), &config, args).output()?;
        let said = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            said.contains("is not valid TOML: TOML parse error at line 4, column 1"),
            "{args:?}: {said}"
        );
        assert!(
            !said.contains(second.expose()) && !said.contains(&unknown_token()),
            "{args:?}: {said}"
        );
        assert_eq!(std::fs::read_to_string(&config)?, text);
    }
    Ok(())
}

/// `--config` naming a folder (`/etc/postern`) is said to be one, by `init` with and
/// without `--force` and by an edit: before 2026-12-07 `init` advised `--force`, which then
/// said the file "changed while it was being read", as did every edit.
#[test]
fn a_folder_given_as_the_config_is_named_as_such() -> Result<()> {
    let dir = TempDir::new("cli-edit-folder")?;
    let folder = dir.path().join("etc-postern");
    std::fs::create_dir(&folder)?;
    let outs = [
        offline_init(&bins(), &folder, "127.0.0.1:1", &unknown_token())?,
        offline_init_command(
            &bins(),
            &folder,
            "127.0.0.1:1",
            &unknown_token(),
            &["--force"],
        )
        .output()?,
        agent_cli(
            &bins(),
            &folder,
            &["connection", "add", "o", "--base-uri", "http://127.0.0.1:9"],
        )?,
    ];
    for out in outs {
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        let said = stderr(&out);
        assert!(
            said.contains("is a folder: --config takes the config file's path (such as ")
                && said.contains("etc-postern/agent.toml)"),
            "{said}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&folder)?.count(),
        0,
        "nothing was written"
    );
    // The commands that only read it say the same, and a missing file is named as missing
    // (before 2026-12-07 they said "cannot read …: Is a directory", and `status` then sent
    // the reader to `config check`, which said the same).
    let missing = dir.path().join("nope.toml");
    for (config, said) in [
        (
            &folder,
            "is a folder: --config takes the config file's path",
        ),
        (
            &missing,
            "nope.toml does not exist: pass the agent's config with --config FILE",
        ),
    ] {
        for args in [
            &["config", "check"][..],
            &["status"],
            &["jwt", "sign", "--connection", "o"],
            &["connection", "test", "o"],
            &["connection", "list"],
        ] {
            let out = agent_cli(&bins(), config, args)?;
            assert!(!out.status.success(), "{args:?}: {}", output_text(&out));
            assert!(stderr(&out).contains(said), "{args:?}: {}", stderr(&out));
        }
    }
    Ok(())
}

/// An edit of a file that does not load as it is (an unknown key in another connection)
/// says so, with the file's own line: before 2026-12-07 it said the edit would not parse,
/// with the line in the edited text.
#[test]
fn an_edit_of_a_file_that_does_not_load_says_the_file_does_not() -> Result<()> {
    let dir = TempDir::new("cli-edit-typo")?;
    let text = offline_agent_config(
        "127.0.0.1:1",
        "\n[connections.plain]\nbase_uri = \"http://127.0.0.1:9/a\"\n\n[connections.hs]\nbase_url = \"http://127.0.0.1:9/b\"\n",
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("base_url"))
        .map(|i| i + 1)
        .unwrap_or_default();
    let config = dir.write_private("agent.toml", &text)?;
    for args in [
        &[
            "connection",
            "add",
            "xx",
            "--base-uri",
            "http://127.0.0.1:9/x",
        ][..],
        &["connection", "remove", "plain"][..],
    ] {
        let out = agent_cli(&bins(), &config, args)?;
        let said = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            output_text(&out)
        );
        assert!(
            said.contains("does not load as it is, so no edit can be checked; fix it first")
                && said.contains(&format!("at line {line}, column 1"))
                && said.contains("base_url"),
            "{args:?}: {said}"
        );
        assert_eq!(std::fs::read_to_string(&config)?, text);
    }
    // An edit that mends it goes through.
    let out = agent_cli(&bins(), &config, &["connection", "remove", "hs"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}

/// The key an algorithm signs with is asked for in `connection add`'s own options: before
/// 2026-12-07 the config's check answered `auth.secret: set one of auth.secret, …` (keys
/// `add` has no option for) or `remove secret*`.
#[test]
fn key_options_are_asked_for_in_the_command_lines_words() -> Result<()> {
    let dir = TempDir::new("cli-edit-keys")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    let add = |extra: &[&str]| agent_cli(&bins(), &config, &add_jwt("k", extra));
    for (extra, said) in [
        (
            &["--algorithm", "HS256"][..],
            "--algorithm HS256 signs with a shared secret: give --secret-file or --secret-env",
        ),
        (
            &["--algorithm", "RS256", "--secret-file", "s"][..],
            "--algorithm RS256 signs with a private key: drop --secret-file, give --private-key-file or --private-key-env",
        ),
        (
            &["--algorithm", "ES256", "--secret-env", "S"][..],
            "drop --secret-env, give --private-key-file",
        ),
        (
            &[
                "--algorithm",
                "HS512",
                "--secret-env",
                "S",
                "--private-key-env",
                "K",
            ][..],
            "--algorithm HS512 signs with a shared secret: drop --private-key-env",
        ),
    ] {
        let out = add(extra)?;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{extra:?}: {}",
            output_text(&out)
        );
        assert!(stderr(&out).contains(said), "{extra:?}: {}", stderr(&out));
        // Never asked for an option it was given.
        assert!(
            !(extra.contains(&"--secret-env") && stderr(&out).contains("give --secret")),
            "{extra:?}: {}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&config)?, before);
    }
    Ok(())
}

/// A relative key path given from the shell's folder (as completion gives it) is said to
/// be taken from the config's folder: before 2026-12-07 the refusal said only that
/// `conf/conf/rs.pem` could not be read.
#[test]
fn a_key_path_from_the_shells_folder_is_said_to_be_the_configs() -> Result<()> {
    let dir = TempDir::new("cli-edit-relative")?;
    std::fs::create_dir(dir.path().join("conf"))?;
    let config = dir.write_private("conf/agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let key = postern_tests::keys::rsa_2048()?;
    dir.write_private("conf/rs.pem", &key.private_pem)?;
    let rs256 = |file| add_jwt("r", &["--algorithm", "RS256", "--private-key-file", file]);
    let out = agent_command(&bins(), &config, &rs256("conf/rs.pem"))
        .current_dir(dir.path())
        .output()?;
    assert_exit(
        &out,
        64,
        "--private-key-file conf/rs.pem: a relative path is taken from the config's folder (",
    );
    // From the config's folder, the same file is taken.
    let out = agent_cli(&bins(), &config, &rs256("rs.pem"))?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}

/// A public key given for the private key is said to be one, not first to be chmodded:
/// it is rightly readable by all, and `chmod 600` would not make it sign.
#[test]
fn a_public_key_for_the_private_key_is_named_before_its_mode() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-edit-public")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let key = postern_tests::keys::rsa_2048()?;
    let public = dir.write_private("rs.pub", &key.public_pem)?;
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644))?;
    let rs256 = ["--algorithm", "RS256", "--private-key-file", "rs.pub"];
    let out = agent_cli(&bins(), &config, &add_jwt("p", &rs256))?;
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        said.contains("holds a public key, not a private key, and cannot sign")
            && !said.contains("chmod"),
        "{said}"
    );
    Ok(())
}

/// A folder given for a key or secret file is said to be one, not first to be chmodded:
/// `chmod 600` on it would lock every key in it (before 2026-12-07 that was the advice).
#[test]
fn a_folder_for_a_key_file_is_named_before_its_mode() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-edit-key-folder")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys)?;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755))?;
    for args in [
        ["--algorithm", "ES256", "--private-key-file", "keys"],
        ["--algorithm", "HS256", "--secret-file", "keys/"],
    ] {
        let out = agent_cli(&bins(), &config, &add_jwt("k", &args))?;
        assert_exit(&out, 1, "it is a folder; name the file in it");
        assert!(!stderr(&out).contains("chmod"), "{}", stderr(&out));
    }
    Ok(())
}

/// A short HMAC secret is warned of with its connection's name, by the edit that writes it
/// and by `config check`, not by an edit refused for another problem nor by commands about
/// other connections.
#[test]
fn a_short_secret_is_warned_of_by_its_connection_once() -> Result<()> {
    let dir = TempDir::new("cli-edit-short")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    dir.write_private("short.txt", "tiny\n")?;
    let args = ["--algorithm", "HS256", "--secret-file", "short.txt"];
    let out = agent_cli(&bins(), &config, &add_jwt("n7", &args))?;
    assert!(out.status.success(), "{}", output_text(&out));
    let warning = "connections.n7: auth.secret is 4 bytes, shorter than HS256's 32-byte hash";
    assert_eq!(stderr(&out).matches(warning).count(), 1, "{}", stderr(&out));
    let said = |out: &std::process::Output| stderr(out).matches(warning).count();
    // An edit refused for another problem says that problem alone.
    let refused = [&args[..], &["--header", "alg=RS256"]].concat();
    let out = agent_cli(&bins(), &config, &add_jwt("n9", &refused))?;
    assert_exit(&out, 1, "header alg is \"RS256\"");
    assert!(
        !stderr(&out).contains("auth.secret is 4 bytes"),
        "{}",
        stderr(&out)
    );
    // Edits of another connection, refused and taken, and a JWT signed for it: silent.
    let out = agent_cli(
        &bins(),
        &config,
        &["connection", "add", "x", "--base-uri", "127.0.0.1:8080"],
    )?;
    assert_exit(&out, 1, "has no scheme");
    assert_eq!(said(&out), 0, "{}", stderr(&out));
    dir.write_private("long.txt", &"k".repeat(32))?;
    let long = ["--algorithm", "HS256", "--secret-file", "long.txt"];
    let out = agent_cli(&bins(), &config, &add_jwt("n8", &long))?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(said(&out), 0, "{}", stderr(&out));
    let out = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "n8"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(said(&out), 0, "{}", stderr(&out));
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(said(&out), 1, "{}", stderr(&out));
    Ok(())
}

/// An encrypted key is added with its passphrase's file, from the command line as for
/// any other key, and signs: before, `connection add` had no option for it.
#[test]
fn an_encrypted_key_is_added_with_its_passphrase() -> Result<()> {
    let dir = TempDir::new("cli-edit-passphrase")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let (plain, _) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("plain.pem", &plain)?;
    postern_tests::pki::openssl(
        dir.path(),
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "plain.pem",
            "-passout",
            "pass:open sesame",
            "-out",
            "made.pem",
        ],
    )?;
    dir.write_private(
        "enc.pem",
        &std::fs::read_to_string(dir.path().join("made.pem"))?,
    )?;
    dir.write_private("passphrase", "open sesame\n")?;
    let add = |extra: &[&str]| {
        let mut args = add_jwt(
            "enc",
            &[
                "--algorithm",
                "ES256",
                "--private-key-file",
                "enc.pem",
                "--payload",
                "aud=x",
            ],
        );
        args.extend_from_slice(extra);
        agent_cli(&bins(), &config, &args)
    };
    let out = add(&[])?;
    assert_exit(&out, 1, "encrypted");
    let out = add(&["--private-key-passphrase-file", "passphrase"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let text = std::fs::read_to_string(&config)?;
    assert!(
        text.contains("private_key_passphrase_file = \"passphrase\""),
        "{text}"
    );
    let signed = agent_cli(&bins(), &config, &["jwt", "sign", "--connection", "enc"])?;
    assert!(signed.status.success(), "{}", output_text(&signed));
    assert_eq!(stdout(&signed).trim().split('.').count(), 3);
    Ok(())
}

/// A config in a new folder named by `tag`, holding an exchange connection `erp` with
/// settings `connection add` has no option for, each with a comment that must stay, and
/// its key `ec.pem`.
fn exchange_config(tag: &str) -> Result<(TempDir, std::path::PathBuf)> {
    let dir = TempDir::new(tag)?;
    let (key, _) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &key)?;
    let connection = "\n# the ERP, through the IdP\n[connections.erp]\nbase_uri = \"http://127.0.0.1:9/erp\"\n\
     rate_limit = { requests = 2, per = \"1s\", burst = 2 }\nmax_wait = \"1s\"  # callers retry\n\
     test = { path = \"/health\" }\n\
     [connections.erp.auth]\ntype = \"jwt_bearer\"\nalgorithm = \"ES256\"\n\
     private_key_file = \"ec.pem\"\nlifetime = \"5m\"\n\
     payload = { iss = \"postern\", jti = \"{{uuid}}\" }\n\
     # exchange settings, added by hand\n[connections.erp.auth.exchange]\n\
     token_url = \"http://127.0.0.1:9/token\"\nparams = { scope = \"erp.read\" }\n";
    let config = dir.write_private(
        "agent.toml",
        &offline_agent_config("127.0.0.1:1", connection),
    )?;
    Ok((dir, config))
}

/// `--replace` overwrites only what the command line sets: before 2026-12-07 it rebuilt
/// the table from the options alone, said `added`, and dropped the rate limit, `lifetime`
/// and the whole exchange table, so the IdP's assertion went to the internal server.
#[test]
fn a_replace_keeps_the_settings_it_does_not_set_and_names_what_it_drops() -> Result<()> {
    let (_dir, config) = exchange_config("cli-edit-replace")?;
    let replace = |extra: &[&str]| {
        let mut args = vec![
            "connection",
            "add",
            "erp",
            "--replace",
            "--base-uri",
            "http://127.0.0.1:9/erp-v2",
        ];
        args.extend_from_slice(extra);
        agent_cli(&bins(), &config, &args)
    };
    // The finding's command: every option of the connection given again but the exchange.
    let out = replace(&[
        "--auth",
        "jwt_bearer",
        "--algorithm",
        "ES256",
        "--private-key-file",
        "ec.pem",
        "--payload",
        "iss=postern",
    ])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("connection \"erp\" replaced in")
            && said.contains(
                "kept from before (not set on this command line): rate_limit, max_wait, test, auth.lifetime, auth.exchange"
            )
            && said.contains("auth.payload.jti (not among the --payloads given"),
        "{said}"
    );
    let text = std::fs::read_to_string(&config)?;
    for kept in [
        "# the ERP, through the IdP",
        "base_uri = \"http://127.0.0.1:9/erp-v2\"",
        "rate_limit = { requests = 2, per = \"1s\", burst = 2 }",
        "max_wait = \"1s\"  # callers retry",
        "lifetime = \"5m\"",
        "# exchange settings, added by hand",
        "[connections.erp.auth.exchange]",
        "params = { scope = \"erp.read\" }",
    ] {
        assert!(text.contains(kept), "{kept} lost:\n{text}");
    }
    let out = agent_cli(&bins(), &config, &["connection", "list"])?;
    assert!(
        stdout(&out).contains("jwt_bearer ES256 (exchange at http://127.0.0.1:9/token)"),
        "{}",
        output_text(&out)
    );

    // Only the base URI: the auth, its key and the rest stay as they are.
    let out = replace(&[])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains(
            "auth.algorithm, auth.private_key_file, auth.lifetime, auth.payload, auth.exchange"
        ) && !stdout(&out).contains("dropped"),
        "{}",
        stdout(&out)
    );

    // `--auth none` drops what only jwt_bearer takes, naming each, and keeps the rest.
    let out = replace(&["--auth", "none"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    let said = stdout(&out);
    for dropped in [
        "auth.exchange (a jwt_bearer setting, and the auth is now \"none\")",
        "auth.lifetime (a jwt_bearer setting",
        "auth.private_key_file (a jwt_bearer setting",
    ] {
        assert!(said.contains(dropped), "{dropped}: {said}");
    }
    assert!(
        said.contains(
            "kept from before (not set on this command line): rate_limit, max_wait, test\n"
        ),
        "{said}"
    );
    let text = std::fs::read_to_string(&config)?;
    assert!(
        !text.contains("exchange")
            && text.contains("rate_limit")
            && text.contains("type = \"none\""),
        "{text}"
    );
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}

/// `--replace` needs no `--base-uri`: the replaced connection's stays, as its other
/// settings do (before 2026-12-07 clap asked for it, so a key's change meant typing the
/// base URI again). Adding a connection still needs one.
#[test]
fn a_replace_keeps_the_base_uri_when_none_is_given() -> Result<()> {
    let (_dir, config) = exchange_config("cli-edit-replace-base")?;
    let args = [
        "connection",
        "add",
        "erp",
        "--replace",
        "--payload",
        "sub=svc",
    ];
    let out = agent_cli(&bins(), &config, &args)?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("kept from before (not set on this command line): base_uri,"),
        "{}",
        stdout(&out)
    );
    let text = std::fs::read_to_string(&config)?;
    assert!(
        text.contains("base_uri = \"http://127.0.0.1:9/erp\"") && text.contains("sub = \"svc\""),
        "{text}"
    );

    let before = std::fs::read_to_string(&config)?;
    let out = agent_cli(
        &bins(),
        &config,
        &["connection", "add", "nope", "--replace", "--auth", "none"],
    )?;
    assert_exit(
        &out,
        1,
        "there is no connection \"nope\" to replace; give --base-uri to add it",
    );
    let out = agent_cli(&bins(), &config, &["connection", "add", "nope"])?;
    assert_exit(&out, 64, "--base-uri");
    assert_eq!(std::fs::read_to_string(&config)?, before);
    Ok(())
}

/// A replace that would leave a key of the other algorithm family is asked for the right
/// one in the command line's words, and the file is left as it was.
#[test]
fn a_replace_to_another_algorithm_family_asks_for_its_key() -> Result<()> {
    let (_dir, config) = exchange_config("cli-edit-replace-family")?;
    let before = std::fs::read_to_string(&config)?;
    let out = agent_cli(
        &bins(),
        &config,
        &add_jwt("erp", &["--replace", "--algorithm", "HS256"]),
    )?;
    assert_exit(
        &out,
        64,
        "--algorithm HS256 signs with a shared secret: give --secret-file or --secret-env",
    );
    assert_eq!(std::fs::read_to_string(&config)?, before);
    let out = agent_cli(
        &bins(),
        &config,
        &add_jwt(
            "erp",
            &[
                "--replace",
                "--algorithm",
                "HS256",
                "--secret-env",
                "ERP_HS",
            ],
        ),
    )?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        stdout(&out).contains("auth.private_key_file (HS256 signs with a shared secret)"),
        "{}",
        stdout(&out)
    );
    Ok(())
}

/// A base URI without its scheme is said to need `http://` or `https://`, as `--relay`
/// says what was meant; before 2026-12-07 it was the url crate's `relative URL without a
/// base`, and `localhost:8080/x` was taken as the scheme `localhost`.
#[test]
fn a_base_uri_without_a_scheme_says_which_to_add() -> Result<()> {
    let dir = TempDir::new("cli-edit-scheme")?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let before = std::fs::read_to_string(&config)?;
    for uri in ["127.0.0.1:8080/x", "localhost:8080/x", "erp.internal/api"] {
        let out = agent_cli(
            &bins(),
            &config,
            &["connection", "add", "x", "--base-uri", uri],
        )?;
        assert_eq!(out.status.code(), Some(1), "{uri}: {}", output_text(&out));
        let expected = format!(
            "connections.x: base_uri \"{uri}\" has no scheme: write it as a URL (did you mean \"http://{uri}\" or \"https://{uri}\"?)"
        );
        assert!(stderr(&out).contains(&expected), "{uri}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&config)?, before);
    }
    // The same at load.
    std::fs::write(
        &config,
        offline_agent_config(
            "127.0.0.1:1",
            "[connections.x]\nbase_uri = \"127.0.0.1:8080/x\"\n",
        ),
    )?;
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert_exit(&out, 1, "did you mean \"http://127.0.0.1:8080/x\"");
    Ok(())
}

/// A direct JWT without `exp` is a credential that never expires: `connection add` and
/// `config check` warn of it (it still loads, as configs that run so must keep running),
/// and `--lifetime` gives one, as the config's `lifetime` does.
#[test]
fn a_jwt_without_exp_is_warned_of_and_lifetime_gives_one() -> Result<()> {
    let dir = TempDir::new("cli-edit-no-exp")?;
    let (key, _) = postern_tests::pki::ec256(dir.path())?;
    dir.write_private("ec.pem", &key)?;
    let config = dir.write_private("agent.toml", &offline_agent_config("127.0.0.1:1", ""))?;
    let es256 = ["--algorithm", "ES256", "--private-key-file", "ec.pem"];
    let out = agent_cli(&bins(), &config, &add_jwt("bare", &es256))?;
    assert!(out.status.success(), "{}", output_text(&out));
    let warning = "connections.bare: its JWT has no exp claim";
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));

    let mut lifetime = es256.to_vec();
    lifetime.extend(["--replace", "--lifetime", "5m"]);
    let out = agent_cli(&bins(), &config, &add_jwt("bare", &lifetime))?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(!stderr(&out).contains(warning), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&config)?.contains("lifetime = \"5m\""));
    let out = agent_cli(&bins(), &config, &["config", "check"])?;
    assert!(
        out.status.success() && !stderr(&out).contains(warning),
        "{}",
        output_text(&out)
    );

    // Parsed as the config's key: what it refuses, the edit refuses.
    let mut bad = es256.to_vec();
    bad.extend(["--replace", "--lifetime", "1500ms"]);
    let out = agent_cli(&bins(), &config, &add_jwt("bare", &bad))?;
    assert_exit(&out, 1, "auth.lifetime must be whole seconds");
    // A lifetime is for jwt_bearer only.
    let out = agent_cli(
        &bins(),
        &config,
        &[
            "connection",
            "add",
            "p",
            "--base-uri",
            "http://h",
            "--lifetime",
            "5m",
        ],
    )?;
    assert_exit(&out, 64, "--lifetime needs --auth jwt_bearer");
    Ok(())
}
