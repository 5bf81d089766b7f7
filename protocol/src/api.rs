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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// `GET /v1/agents`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// Answer to creating an API key: the key is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub name: String,
    pub key: String,
}
