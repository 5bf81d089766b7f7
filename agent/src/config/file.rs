//! The config file's shape, exactly as users write it: `deny_unknown_fields`
//! everywhere so a typo is an error, defaults in named functions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub relay: String,
    pub relay_fingerprint: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionFile {
    pub base_uri: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub auth: AuthFile,
}

fn default_timeout() -> String {
    "30s".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthFile {
    #[default]
    None,
    JwtBearer(Box<JwtBearerFile>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerFile {
    pub algorithm: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    pub private_key: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub private_key_env: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub payload: serde_json::Map<String, serde_json::Value>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
