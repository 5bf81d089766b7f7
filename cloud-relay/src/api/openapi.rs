//! The API as an OpenAPI 3 document, served at `/v1/openapi.json`; its tests hold it
//! to the router: every documented route answers, every routed path is documented.

use axum::response::IntoResponse;

/// Hand-written, so it says what callers need (codes, shown-once secrets).
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use http::Request;
    use postern_protocol::SecretKind;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::config::RelayConfig;
    use crate::context::RelayContext;
    use crate::store::{SqliteStore, Store};

    fn document() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// The paths given to `.route(…)` in api.rs, in the document's spelling.
    fn routed_paths() -> Vec<String> {
        let source = include_str!("../api.rs");
        let mut paths = Vec::new();
        for chunk in source.split(".route(").skip(1) {
            let Some(start) = chunk.find('"') else {
                continue;
            };
            let Some(len) = chunk[start + 1..].find('"') else {
                continue;
            };
            let path = &chunk[start + 1..start + 1 + len];
            let path = path.replace("{*path}", "{path}");
            // `/http` and `/http/` are the same call route with an empty path.
            let path = match path
                .strip_suffix("/http")
                .or_else(|| path.strip_suffix("/http/"))
            {
                Some(prefix) => format!("{prefix}/http/{{path}}"),
                None => path,
            };
            paths.push(path);
        }
        paths
    }

    #[test]
    fn every_routed_path_is_documented() {
        let doc = document();
        let documented = doc["paths"].as_object().expect("paths");
        let routed = routed_paths();
        assert!(routed.len() >= 10, "found only {routed:?}");
        for path in &routed {
            assert!(
                documented.contains_key(path),
                "{path} is routed but not in openapi.json"
            );
        }
        for path in documented.keys() {
            assert!(routed.contains(path), "{path} is documented but not routed");
        }
    }

    #[test]
    fn the_error_code_enum_lists_every_code() {
        let doc = document();
        let listed: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
            ["properties"]["code"]["enum"]
            .as_array()
            .expect("the Error schema's code enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let codes: Vec<&str> = postern_protocol::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(listed, codes);
    }

    /// A client generated from the document can send what the call route passes on: a
    /// body with the methods that carry one, and a query string with any.
    #[test]
    fn call_operations_declare_a_body_and_a_query() {
        let doc = document();
        let calls = doc["paths"]["/v1/agents/{agent}/connections/{connection}/http/{path}"]
            .as_object()
            .expect("the call route");
        assert_eq!(calls.len(), 7, "{:?}", calls.keys());
        for (method, operation) in calls {
            let carries_body = matches!(method.as_str(), "post" | "put" | "patch" | "delete");
            assert_eq!(
                operation.get("requestBody").is_some(),
                carries_body,
                "{method}: a requestBody exactly when the method carries a body"
            );
            let parameters = operation["parameters"].as_array().expect("parameters");
            assert!(
                parameters
                    .iter()
                    .any(|p| p["$ref"] == "#/components/parameters/query"),
                "{method} declares no query"
            );
        }
        let query = &doc["components"]["parameters"]["query"];
        assert_eq!(query["in"], "query");
        assert_eq!(query["schema"]["additionalProperties"]["type"], "string");
    }

    /// A field an answer always holds (`null` when empty) is `required`, so a typed client
    /// need not guess; and the schema lists no field the answer lacks.
    #[test]
    fn answer_schemas_require_every_field_the_answers_hold() {
        use postern_protocol::api::{
            AgentCreated, AgentInfo, ApiKeyCreated, ApiKeyInfo, ApiKeyScope, TokenRotated,
        };
        let text = || String::new();
        let samples = [
            (
                "AgentInfo",
                serde_json::to_value(AgentInfo {
                    id: text(),
                    name: text(),
                    created_at: text(),
                    online: false,
                    connected_since: None,
                    remote_addr: None,
                    agent_version: None,
                    protocol_version: None,
                    connections: Vec::new(),
                    calls_in_flight: 0,
                    last_seen: None,
                    last_disconnect_reason: None,
                }),
            ),
            (
                "TokenRotated",
                serde_json::to_value(TokenRotated {
                    id: text(),
                    name: text(),
                    token: text(),
                    old_token_valid_until: None,
                    earlier_grace_cut: None,
                    replaced_unused_token: false,
                }),
            ),
            (
                "AgentCreated",
                serde_json::to_value(AgentCreated {
                    id: text(),
                    name: text(),
                    token: text(),
                }),
            ),
            (
                "ApiKeyCreated",
                serde_json::to_value(ApiKeyCreated {
                    name: text(),
                    key: text(),
                    scope: ApiKeyScope::Call,
                }),
            ),
            (
                "ApiKeyInfo",
                serde_json::to_value(ApiKeyInfo {
                    name: text(),
                    scope: ApiKeyScope::Call,
                    created_at: text(),
                }),
            ),
        ];
        let doc = document();
        let sorted = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };
        for (name, sample) in samples {
            let sample = sample.expect("serialises");
            let fields = sorted(
                sample
                    .as_object()
                    .expect("object")
                    .keys()
                    .cloned()
                    .collect(),
            );
            let schema = &doc["components"]["schemas"][name];
            let required = schema["required"].as_array().expect("required");
            let required = sorted(
                required
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            );
            let properties = schema["properties"].as_object().expect("properties");
            let properties = sorted(properties.keys().cloned().collect());
            assert_eq!(required, fields, "{name}: required");
            assert_eq!(properties, fields, "{name}: properties");
        }
    }

    /// The document's name rules are the store's (`check_name`, `check_agent_name`).
    #[test]
    fn name_rules_are_the_stores() {
        use crate::store::{AGENT_ID_PREFIX, check_agent_name, check_name};
        let doc = document();
        for schema in ["CreateAgent", "CreateApiKey"] {
            let name = &doc["components"]["schemas"][schema]["properties"]["name"];
            assert_eq!(name["minLength"], 1, "{schema}");
            assert_eq!(
                name["maxLength"],
                postern_protocol::target::MAX_CONNECTION_NAME_LEN,
                "{schema}"
            );
            assert_eq!(name["pattern"], "^[A-Za-z0-9][A-Za-z0-9_-]*$", "{schema}");
        }
        // The pattern, as the store reads it.
        for (sample, valid) in [
            ("a", true),
            ("9-b_C", true),
            ("_a", false),
            ("-a", false),
            ("a.b", false),
            ("a b", false),
            ("\u{e9}", false),
        ] {
            assert_eq!(check_name(sample).is_ok(), valid, "{sample:?}");
        }
        assert!(check_agent_name(&format!("{AGENT_ID_PREFIX}x")).is_err());
        let agent =
            doc["components"]["schemas"]["CreateAgent"]["properties"]["name"]["description"]
                .as_str()
                .unwrap_or_default();
        assert!(agent.contains(AGENT_ID_PREFIX), "{agent}");
    }

    /// What the document says of `grace` has the code's maximum.
    #[test]
    fn the_grace_maximum_is_the_code_s() {
        let hours = format!("{} h", crate::api::token::MAX_GRACE.as_secs() / 3600);
        let doc = document();
        let rotate = &doc["paths"]["/v1/agents/{agent}/token"]["post"];
        let grace = &doc["components"]["schemas"]["RotateToken"]["properties"]["grace"];
        for text in [&rotate["description"], &grace["description"]] {
            let text = text.as_str().unwrap_or_default();
            assert!(text.contains(&hours), "{text}");
        }
    }

    /// Generated clients learn of the headers every answer has: `x-request-id` on each
    /// response (and as a parameter to send), `x-postern-error` on each of postern's own
    /// errors, `Retry-After` on a call's `rate_limited` and its `token_exchange_failed`.
    #[test]
    fn every_response_documents_its_headers() {
        let doc = document();
        let mut errors = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let parameters = operation["parameters"].as_array().expect("parameters");
                assert!(
                    parameters.contains(
                        &serde_json::json!({"$ref": "#/components/parameters/requestId"})
                    ),
                    "{method} {path} takes no x-request-id"
                );
                for (status, answer) in operation["responses"].as_object().expect("responses") {
                    let headers = &answer["headers"];
                    assert!(
                        headers.get("X-Request-Id").is_some(),
                        "{method} {path} {status}: no X-Request-Id"
                    );
                    let postern_error = answer["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/Error";
                    errors += usize::from(postern_error);
                    assert_eq!(
                        headers.get("X-Postern-Error").is_some(),
                        postern_error,
                        "{method} {path} {status}: X-Postern-Error"
                    );
                    assert_eq!(
                        headers.get("Retry-After").is_some(),
                        (status == "429" || status == "502") && path.contains("/http/"),
                        "{method} {path} {status}: Retry-After"
                    );
                }
            }
        }
        assert!(errors > 100, "only {errors} error answers");
        for name in ["X-Request-Id", "X-Postern-Error", "Retry-After"] {
            assert!(doc["components"]["headers"].get(name).is_some(), "{name}");
        }
    }

    /// The relay's router on a fresh store in `name`'s folder, and an admin key for it.
    fn relay(name: &str) -> (impl crate::api::Api, String, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("postern-{name}-{}", std::process::id()));
        let store = Arc::new(SqliteStore::open_in(&dir).expect("store"));
        let key = crate::secrets::new_token(SecretKind::ApiKey);
        store.create_api_key("admin", &key).expect("key");
        let ctx = Arc::new(RelayContext::new(
            RelayConfig::default(),
            store,
            CancellationToken::new(),
        ));
        (crate::api::router(ctx), key.expose().to_owned(), dir)
    }

    /// Each documented operation: its method, its path with sample values, and the
    /// security it names (`None`: the document's default, an API key).
    fn operations() -> Vec<(String, String, Option<serde_json::Value>)> {
        let doc = document();
        let mut all = Vec::new();
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            let concrete = path
                .replace("{agent}", "nobody")
                .replace("{connection}", "c")
                .replace("{path}", "x/y")
                .replace("{name}", "nobody");
            for (method, operation) in operations.as_object().expect("operations") {
                all.push((
                    method.to_uppercase(),
                    concrete.clone(),
                    operation.get("security").cloned(),
                ));
            }
        }
        all
    }

    /// What the document says of keys is what the relay asks: an operation that names no
    /// security (`[]`) answers without a key, every other one refuses with 401, and says
    /// how to authenticate (`WWW-Authenticate`, as the document has it).
    #[tokio::test]
    async fn each_operation_asks_for_a_key_as_documented() {
        let (app, _, dir) = relay("openapi-security");
        let challenge = |response: &axum::response::Response| {
            let value = response.headers().get(http::header::WWW_AUTHENTICATE);
            value.and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let mut keyless = 0;
        for (method, path, security) in operations() {
            let ask = |authorization: Option<&str>| {
                let mut request = Request::builder().method(method.as_str()).uri(&path);
                if let Some(value) = authorization {
                    request = request.header("authorization", value);
                }
                app.clone()
                    .oneshot(request.body(Body::empty()).expect("request"))
            };
            let response = ask(None).await.expect("answer");
            let status = response.status();
            assert!(
                response.headers().contains_key("x-request-id"),
                "{method} {path} without a key: no x-request-id"
            );
            let open = security.is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
            keyless += usize::from(open);
            assert_eq!(
                status == 401,
                !open,
                "{method} {path} without a key: {status}"
            );
            if open {
                continue;
            }
            assert_eq!(
                challenge(&response).as_deref(),
                Some(r#"Bearer realm="postern""#),
                "{method} {path} without a key"
            );
            assert_eq!(
                response
                    .headers()
                    .get("x-postern-error")
                    .map(|v| v.as_bytes()),
                Some(&b"unauthorized"[..]),
                "{method} {path} without a key"
            );
            let malformed = ask(Some("Bearer psk_nope")).await.expect("answer");
            assert_eq!(malformed.status(), 401, "{method} {path}");
            assert_eq!(
                challenge(&malformed).as_deref(),
                Some(r#"Bearer realm="postern", error="invalid_token""#),
                "{method} {path} with a malformed key"
            );
        }
        assert_eq!(keyless, 2, "/healthz and /v1/openapi.json");
        let doc = document();
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                if let Some(refused) = operation["responses"].get("401") {
                    assert!(
                        refused["headers"].get("WWW-Authenticate").is_some(),
                        "{method} {path}: its 401 names no WWW-Authenticate"
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Every route answers a head past `max_header_bytes` with 431 (the check is in the
    /// layer all requests go through), and every operation says so.
    #[tokio::test]
    async fn each_operation_documents_the_431_it_gives() {
        let (app, key, dir) = relay("openapi-431");
        let doc = document();
        let big = "x".repeat(RelayConfig::default().header_limit() + 1);
        for (method, path, _) in operations() {
            let request = Request::builder()
                .method(method.as_str())
                .uri(&path)
                .header("authorization", format!("Bearer {key}"))
                .header("x-big", big.as_str())
                .body(Body::empty())
                .expect("request");
            let response = app.clone().oneshot(request).await.expect("answer");
            assert_eq!(response.status(), 431, "{method} {path}");
            for header in ["x-request-id", "x-postern-error"] {
                assert!(
                    response.headers().contains_key(header),
                    "{method} {path}: its 431 has no {header}"
                );
            }
        }
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                assert!(
                    operation["responses"].get("431").is_some(),
                    "{method} {path} does not list 431"
                );
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A name that is not UTF-8 gets an answer each operation documents: axum's `Path`
    /// refuses it with 400 before the handler, the call route looks it up (404).
    #[tokio::test]
    async fn each_operation_documents_its_answer_to_a_name_that_is_not_utf8() {
        let (app, key, dir) = relay("openapi-utf8");
        let doc = document();
        let mut checked = 0;
        for (path, operations) in doc["paths"].as_object().expect("paths") {
            if !path.contains("{agent}") && !path.contains("{name}") {
                continue;
            }
            let concrete = path
                .replace("{agent}", "%E9")
                .replace("{connection}", "%E9")
                .replace("{name}", "%E9")
                .replace("{path}", "x");
            for (method, operation) in operations.as_object().expect("operations") {
                let request = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&concrete)
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .expect("request");
                let status = app.clone().oneshot(request).await.expect("answer").status();
                assert!(
                    operation["responses"].get(status.as_str()).is_some(),
                    "{method} {path} answers {status} to a name that is not UTF-8, undocumented"
                );
                checked += 1;
            }
        }
        assert!(checked >= 12, "only {checked} operations checked");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn every_documented_operation_reaches_a_handler() {
        let (app, key, dir) = relay("openapi");
        let mut checked = 0;
        for (method, path, _) in operations() {
            let request = Request::builder()
                .method(method.as_str())
                .uri(&path)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let response = app.clone().oneshot(request).await.expect("answer");
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, 405, "{method} {path}: method not routed");
            assert!(
                !text.contains("no such route"),
                "{method} {path}: not routed ({text})"
            );
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} operations checked");
        let _ = std::fs::remove_dir_all(dir);
    }
}
