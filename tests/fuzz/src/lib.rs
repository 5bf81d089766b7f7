//! The fuzz targets' bodies: each feeds arbitrary bytes to one parser and checks what it
//! promises (round trips, staying under the base URI), not only that it does not panic.
//! `tests/tests/fuzz_corpus.rs` runs these same bodies in every `cargo test`.

use std::path::Path;

use postern_agent::config::{AgentConfig, ConfigFile};
use postern_agent::jwt::PayloadTemplate;
use postern_protocol::ChannelTarget;
use postern_protocol::control::{AgentMessage, RelayMessage, decode_line, encode_line};

/// The names of the targets, as `cargo fuzz run <name>` takes them.
pub const TARGETS: [&str; 6] = [
    "channel_target",
    "control_message",
    "payload_template",
    "pem_key",
    "agent_config",
    "upstream_url",
];

/// Runs target `name` on `data`; panics on a broken promise.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "channel_target" => channel_target(data),
        "control_message" => control_message(data),
        "payload_template" => payload_template(data),
        "pem_key" => pem_key(data),
        "agent_config" => agent_config(data),
        "upstream_url" => upstream_url(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// A channel target that parses prints back to itself.
pub fn channel_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = ChannelTarget::parse(text) {
        let again = ChannelTarget::parse(&target.to_string()).expect("a printed target parses");
        assert_eq!(again, target);
    }
}

/// A control line that decodes encodes to a line that decodes to the same message.
pub fn control_message(data: &[u8]) {
    if let Ok(message) = decode_line::<AgentMessage>(data) {
        let line = encode_line(&message);
        assert_eq!(
            decode_line::<AgentMessage>(&line).expect("round trip"),
            message
        );
    }
    if let Ok(message) = decode_line::<RelayMessage>(data) {
        let line = encode_line(&message);
        assert_eq!(
            decode_line::<RelayMessage>(&line).expect("round trip"),
            message
        );
    }
}

/// A payload that parses as a template renders, or fails with an error, never a panic.
pub fn payload_template(data: &[u8]) {
    let Ok(serde_json::Value::Object(payload)) = serde_json::from_slice(data) else {
        return;
    };
    if let Ok(template) = PayloadTemplate::parse(&payload) {
        let env = |name: &str| {
            (name == "SET")
                .then(|| "value".to_owned())
                .ok_or(std::env::VarError::NotPresent)
        };
        let _ = template.render(1_700_000_000, &env);
        let _ = template.render(u64::MAX, &env);
    }
}

/// A normalised pasted key has real line breaks only and no surrounding whitespace, and
/// loading never panics.
pub fn pem_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let once = postern_agent::jwt::key::normalize_pem(text);
    assert!(!once.contains('\r') && !once.contains("\\n"), "{once:?}");
    assert_eq!(once.trim(), once);
    let _ = postern_agent::jwt::key::load_private_key(text);
}

/// Any config text loads or is refused with a message; files it names are not there.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = ConfigFile::parse(text) {
        let _ = AgentConfig::resolve(file, Path::new("/nonexistent/postern-fuzz"), &|_| {
            Err(std::env::VarError::NotPresent)
        });
    }
}

/// Whatever path a caller sends, an upstream URL that is built stays under the base.
pub fn upstream_url(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let base = url::Url::parse("http://127.0.0.1:9000/api").expect("base");
    if let Ok(url) = postern_agent::upstream_url::build(&base, path) {
        assert_eq!(url.origin(), base.origin(), "{path:?} → {url}");
        assert!(
            url.path() == "/api" || url.path().starts_with("/api/"),
            "{path:?} → {url}"
        );
        assert!(url.fragment().is_none(), "{path:?} → {url}");
    }
}
