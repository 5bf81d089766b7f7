//! JSON bodies of the relay's HTTP API (`/v1/…`), shared by the relay, the
//! CLI's `--json` output and the tests.

use serde::{Deserialize, Serialize};

/// `POST /v1/agents`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
}

/// Answer to creating an agent: the token is shown this once.
#[derive(Clone, Serialize, Deserialize)]
pub struct AgentCreated {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// One agent as `GET /v1/agents` and `GET /v1/agents/{agent}` report it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub online: bool,
    pub connected_since: Option<String>,
    pub remote_addr: Option<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<u32>,
    pub connections: Vec<String>,
    /// Calls under way through this agent right now.
    pub calls_in_flight: u64,
    /// Now while online, else when the last session ended (RFC 3339).
    pub last_seen: Option<String>,
    /// Why the last session ended.
    pub last_disconnect_reason: Option<String>,
}

/// `GET /v1/agents`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// What an API key may do: `admin` everything, `call` run calls and read agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyScope {
    #[default]
    Admin,
    Call,
}

impl ApiKeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Call => "call",
        }
    }
}

impl std::fmt::Display for ApiKeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Read as a string, not as serde's enum: serde_json reports a `null` or a number where
/// an enum belongs as a syntax error ("expected value"), which sent callers looking for a
/// typo in valid JSON.
impl<'de> Deserialize<'de> for ApiKeyScope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scope;
        impl serde::de::Visitor<'_> for Scope {
            type Value = ApiKeyScope;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"admin\" or \"call\" (left out: admin)")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ApiKeyScope, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Scope)
    }
}

impl std::str::FromStr for ApiKeyScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "call" => Ok(Self::Call),
            other => Err(format!("unknown scope {other:?}: use admin or call")),
        }
    }
}

/// `POST /v1/apikeys`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    #[serde(default)]
    pub scope: ApiKeyScope,
}

/// Answer to creating an API key: the key is shown this once.
#[derive(Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub name: String,
    pub key: String,
    pub scope: ApiKeyScope,
}

/// One API key as listed: never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub name: String,
    pub scope: ApiKeyScope,
    pub created_at: String,
}

/// `GET /v1/apikeys`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

/// `POST /v1/agents/{agent}/token`: `grace` keeps the old token valid for new sessions that long.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateToken {
    pub grace: Option<String>,
}

/// Answer to a rotation: the new token, shown this once.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenRotated {
    pub id: String,
    pub name: String,
    pub token: String,
    pub old_token_valid_until: Option<String>,
    /// Set when an earlier rotation's grace was still running: the token it kept, which
    /// would have worked until then, stopped working now (one old token is kept), and an
    /// agent still on it loses its session.
    #[serde(default)]
    pub earlier_grace_cut: Option<String>,
    /// The token replaced was an earlier rotation's that no agent had logged in with (a
    /// retry of a rotation whose answer was lost, say): it stopped working, and the token
    /// before it, which agents use, is the old token valid until `old_token_valid_until`.
    #[serde(default)]
    pub replaced_unused_token: bool,
}

// By hand: the secret each carries must not reach a log line or a failed assertion.
impl std::fmt::Debug for AgentCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCreated")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for ApiKeyCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyCreated")
            .field("name", &self.name)
            .field("key", &"[redacted]")
            .field("scope", &self.scope)
            .finish()
    }
}

impl std::fmt::Debug for TokenRotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRotated")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &"[redacted]")
            .field("old_token_valid_until", &self.old_token_valid_until)
            .field("earlier_grace_cut", &self.earlier_grace_cut)
            .field("replaced_unused_token", &self.replaced_unused_token)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_that_is_not_a_scope_is_a_wrong_value_not_a_syntax_error() {
        let read = |text: &str| serde_json::from_str::<CreateApiKey>(text);
        assert_eq!(
            read(r#"{"name":"k"}"#).map(|k| k.scope).ok(),
            Some(ApiKeyScope::Admin)
        );
        assert_eq!(
            read(r#"{"name":"k","scope":"call"}"#).map(|k| k.scope).ok(),
            Some(ApiKeyScope::Call)
        );
        for value in ["null", "1", "[]", r#""root""#, r#""Admin""#] {
            let text = format!(r#"{{"name":"k","scope":{value}}}"#);
            let Err(e) = read(&text) else {
                panic!("{text} taken");
            };
            assert_eq!(
                e.classify(),
                serde_json::error::Category::Data,
                "{text}: {e}"
            );
            let said = e.to_string();
            assert!(
                said.contains("admin") && said.contains("call"),
                "{text}: {said}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret_shown_once() {
        let shown = [
            format!(
                "{:?}",
                AgentCreated {
                    id: "agt_1".into(),
                    name: "a".into(),
                    token: "pat_s3cret".into(),
                }
            ),
            format!(
                "{:?}",
                ApiKeyCreated {
                    name: "k".into(),
                    key: "pak_s3cret".into(),
                    scope: ApiKeyScope::Admin,
                }
            ),
            format!(
                "{:?}",
                TokenRotated {
                    id: "agt_1".into(),
                    name: "a".into(),
                    token: "pat_s3cret".into(),
                    old_token_valid_until: None,
                    earlier_grace_cut: None,
                    replaced_unused_token: false,
                }
            ),
        ];
        for text in shown {
            assert!(
                !text.contains("s3cret") && text.contains("[redacted]"),
                "{text}"
            );
        }
    }
}
