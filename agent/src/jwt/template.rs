//! JWT payload templates: a JSON object whose string values may hold `{{now + 600}}`,
//! `{{uuid}}`, `{{env.NAME}}` and friends, parsed once and rendered for every token.

use serde::Serialize;
use serde_json::{Map, Value};

/// The template forms, as listed in error messages.
const SUPPORTED: &str = "{{now}}, {{now + N}}, {{now - N}}, {{uuid}}, {{env.NAME}}, \
     {{currentTimeSeconds}} or {{plus currentTimeSeconds N}} (N in whole seconds)";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "{path}: \"{{{{\" has no closing \"}}}}\" in {text:?}; write a template as {{{{now}}}}"
    )]
    Unterminated { path: String, text: String },
    #[error("{path}: unknown template \"{{{{{template}}}}}\"; expected one of {supported}", supported = SUPPORTED)]
    Unknown { path: String, template: String },
    #[error(
        "{path}: the template {{{{env.{name}}}}} needs the environment variable {name}, but it is not set"
    )]
    MissingEnv { path: String, name: String },
    #[error(
        "{path}: the template {{{{env.{name}}}}} needs the environment variable {name}, which is set but is not valid UTF-8"
    )]
    EnvNotUnicode { path: String, name: String },
    #[error(
        "{path}: the template \"{{{{{template}}}}}\" gives a time before 1970 or past the largest unix time (an offset back is at most the time since 1970, one ahead at most 100 years)"
    )]
    TimeOutOfRange { path: String, template: String },
    #[error(
        "{path} must be a number of seconds since 1970 (RFC 7519's NumericDate; verifiers \
         refuse anything else): write a number, or one time template alone such as \
         \"{{{{now + 300}}}}\""
    )]
    NotNumericDate { path: String },
    #[error("payload: cannot be written as JSON: {0}")]
    Json(String),
}

/// The largest `{{now + N}}` offset, 100 years in seconds: past it a time would be so far
/// ahead no verifier takes it. `{{now - N}}` goes back at most to 1970: past that it
/// falls before, whenever the token is signed from now on.
const MAX_OFFSET: u64 = 100 * 365 * 24 * 3600;

/// Whether `{{now + offset}}` (or `- offset`) can give a time a token carries.
fn offset_in_range(offset: i64) -> bool {
    let since_1970 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match offset {
        ..0 => offset.unsigned_abs() <= since_1970,
        _ => offset.unsigned_abs() <= MAX_OFFSET,
    }
}

/// The claims RFC 7519 defines as NumericDate.
const TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];

/// A JSON object whose string values may hold templates, evaluated per token.
#[derive(Debug, Clone)]
pub struct PayloadTemplate {
    fields: Vec<(String, Node)>,
}

#[derive(Debug, Clone)]
enum Node {
    /// Anything without a template, including every non-string value.
    Plain(Value),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    /// A string that is exactly one template: renders to the template's natural JSON type.
    Whole {
        path: String,
        template: String,
        expr: Expr,
    },
    /// Templates mixed with text: renders to a string.
    Text {
        path: String,
        pieces: Vec<Piece>,
    },
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Template { template: String, expr: Expr },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// The clock plus this many seconds (negative for `now - N`).
    Now(i64),
    Uuid,
    Env(String),
}

impl PayloadTemplate {
    /// Parses every string value (recursively through nested objects/arrays) once; unknown
    /// templates are an error naming the JSON path (e.g. `payload.exp`) and the template text.
    /// The first problem only: [`parse_all`](Self::parse_all) lists every one.
    pub fn parse(payload: &Map<String, Value>) -> Result<Self, TemplateError> {
        Self::parse_all(payload).map_err(|mut errors| errors.swap_remove(0))
    }

    /// [`parse`](Self::parse), with every problem of the payload in payload order (those of
    /// the templates, then the time claims that are not numbers), so `config check` can list
    /// them at once. Never `Err` with an empty list.
    pub fn parse_all(payload: &Map<String, Value>) -> Result<Self, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let fields = parse_object(payload, "payload", &mut errors);
        for (key, node) in &fields {
            let numeric = match node {
                // Its problem is listed already.
                None => true,
                Some(Node::Plain(value)) => value.is_number(),
                Some(Node::Whole { expr, .. }) => matches!(expr, Expr::Now(_)),
                Some(Node::Object(_) | Node::Array(_) | Node::Text { .. }) => false,
            };
            if TIME_CLAIMS.contains(&key.as_str()) && !numeric {
                errors.push(TemplateError::NotNumericDate {
                    path: format!("payload.{key}"),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fields = fields
            .into_iter()
            .filter_map(|(key, node)| node.map(|node| (key, node)))
            .collect();
        Ok(Self { fields })
    }

    /// The payload's JSON text at the given clock (unix seconds), with an env lookup function.
    /// Written straight from the parsed template: no `Value` is built per token.
    pub fn render(
        &self,
        now_unix: u64,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Vec<u8>, TemplateError> {
        let mut out = Vec::with_capacity(256);
        write_object(&self.fields, now_unix, env, &mut out)?;
        Ok(out)
    }

    /// Whether two tokens rendered in the same second may differ: only `{{uuid}}` makes them
    /// (the clock is read in whole seconds, and a running agent's environment does not change).
    pub fn differs_within_a_second(&self) -> bool {
        self.templates()
            .iter()
            .any(|(_, expr)| **expr == Expr::Uuid)
    }

    /// A [`TemplateError::MissingEnv`] (or `EnvNotUnicode`) per `{{env.NAME}}` whose variable
    /// `env` lacks or cannot read: checked
    /// when the config is loaded, so an unset variable refuses the config rather than every
    /// call (a running agent's environment does not change).
    pub fn missing_env(
        &self,
        env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Vec<TemplateError> {
        let mut missing = Vec::new();
        for (path, expr) in self.templates() {
            if let Expr::Env(name) = expr
                && let Err(e) = env(name)
            {
                let error = env_error(path, name, &e);
                if !missing.contains(&error) {
                    missing.push(error);
                }
            }
        }
        missing
    }

    /// Every template in the payload with the path of the string holding it, in payload order.
    fn templates(&self) -> Vec<(&str, &Expr)> {
        let mut found = Vec::new();
        for (_, node) in &self.fields {
            node.collect_templates(&mut found);
        }
        found
    }

    /// How many seconds after the clock a top-level claim is, when it is exactly one
    /// `{{now ± N}}` template (as `lifetime` writes `exp`); `None` for anything else.
    pub fn seconds_from_now(&self, name: &str) -> Option<i64> {
        self.fields.iter().find_map(|(key, node)| match node {
            Node::Whole {
                expr: Expr::Now(offset),
                ..
            } if key == name => Some(*offset),
            _ => None,
        })
    }

    /// Whether the top-level payload sets this claim (e.g. "exp").
    pub fn has_claim(&self, name: &str) -> bool {
        self.fields.iter().any(|(key, _)| key == name)
    }
}

impl Node {
    fn collect_templates<'a>(&'a self, found: &mut Vec<(&'a str, &'a Expr)>) {
        match self {
            Node::Plain(_) => {}
            Node::Object(fields) => fields.iter().for_each(|(_, n)| n.collect_templates(found)),
            Node::Array(items) => items.iter().for_each(|n| n.collect_templates(found)),
            Node::Whole { path, expr, .. } => found.push((path, expr)),
            Node::Text { path, pieces } => {
                for piece in pieces {
                    if let Piece::Template { expr, .. } = piece {
                        found.push((path, expr));
                    }
                }
            }
        }
    }
}

/// The object's fields, a field whose value has a problem as `None` (the problem is added
/// to `errors`), so one problem does not hide the others.
fn parse_object(
    object: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<TemplateError>,
) -> Vec<(String, Option<Node>)> {
    object
        .iter()
        .map(|(key, value)| {
            (
                key.clone(),
                parse_value(value, &child_path(path, key), errors),
            )
        })
        .collect()
}

fn parse_value(value: &Value, path: &str, errors: &mut Vec<TemplateError>) -> Option<Node> {
    let before = errors.len();
    let node = match value {
        Value::String(text) => match parse_string(text, path) {
            Ok(node) => node,
            Err(found) => {
                errors.extend(found);
                return None;
            }
        },
        Value::Object(object) => Node::Object(
            parse_object(object, path, errors)
                .into_iter()
                .filter_map(|(key, node)| node.map(|node| (key, node)))
                .collect(),
        ),
        Value::Array(items) => Node::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| parse_value(item, &format!("{path}[{i}]"), errors))
                .collect(),
        ),
        other => Node::Plain(other.clone()),
    };
    (errors.len() == before).then_some(node)
}

/// `payload.exp` for plain keys; keys that would make the path ambiguous are quoted.
fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("{parent}.{key}")
    } else {
        format!("{parent}[{}]", Value::String(key.to_owned()))
    }
}

/// The string's templates, or every unknown one in it (and an unterminated `{{`).
fn parse_string(text: &str, path: &str) -> Result<Node, Vec<TemplateError>> {
    let mut pieces = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            errors.push(TemplateError::Unterminated {
                path: path.to_owned(),
                text: text.to_owned(),
            });
            return Err(errors);
        };
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_owned()));
        }
        let template = &after_open[..close];
        match parse_expr(template) {
            // Checked here, not only when a token is signed: `config check` says it.
            Some(Expr::Now(offset)) if !offset_in_range(offset) => {
                errors.push(TemplateError::TimeOutOfRange {
                    path: path.to_owned(),
                    template: template.to_owned(),
                })
            }
            Some(expr) => pieces.push(Piece::Template {
                template: template.to_owned(),
                expr,
            }),
            None => errors.push(TemplateError::Unknown {
                path: path.to_owned(),
                template: template.to_owned(),
            }),
        }
        rest = &after_open[close + 2..];
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(match pieces.as_slice() {
        [] => Node::Plain(Value::String(String::new())),
        [Piece::Literal(_)] => Node::Plain(Value::String(text.to_owned())),
        [Piece::Template { template, expr }] => Node::Whole {
            path: path.to_owned(),
            template: template.clone(),
            expr: expr.clone(),
        },
        _ => Node::Text {
            path: path.to_owned(),
            pieces,
        },
    })
}

/// The inside of `{{ … }}`, or `None` if it is no template we know.
fn parse_expr(template: &str) -> Option<Expr> {
    let inner = template.trim();
    match inner {
        "now" | "currentTimeSeconds" => return Some(Expr::Now(0)),
        "uuid" => return Some(Expr::Uuid),
        _ => {}
    }
    if let Some(name) = inner.strip_prefix("env.") {
        return is_env_name(name).then(|| Expr::Env(name.to_owned()));
    }
    if let Some(rest) = inner.strip_prefix("now") {
        let rest = rest.trim_start();
        let (sign, amount) = if let Some(n) = rest.strip_prefix('+') {
            (1, n)
        } else if let Some(n) = rest.strip_prefix('-') {
            (-1, n)
        } else {
            return None;
        };
        return parse_seconds(amount.trim_start()).map(|n| Expr::Now(sign * n));
    }
    let words: Vec<&str> = inner.split_whitespace().collect();
    if let ["plus", "currentTimeSeconds", amount] = words.as_slice() {
        // The integration platforms write negative offsets as `plus currentTimeSeconds -60`.
        let (sign, digits) = match amount.strip_prefix('-') {
            Some(digits) => (-1, digits),
            None => (1, *amount),
        };
        return parse_seconds(digits).map(|n| sign * n).map(Expr::Now);
    }
    None
}

/// Whole seconds as plain digits: no sign, no fraction, no exponent.
fn parse_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn write_object(
    fields: &[(String, Node)],
    now: u64,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    out: &mut Vec<u8>,
) -> Result<(), TemplateError> {
    out.push(b'{');
    for (i, (key, node)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(key, out)?;
        out.push(b':');
        write_node(node, now, env, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_node(
    node: &Node,
    now: u64,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
    out: &mut Vec<u8>,
) -> Result<(), TemplateError> {
    match node {
        Node::Plain(value) => write_json(value, out),
        Node::Object(fields) => write_object(fields, now, env, out),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, now, env, out)?;
            }
            out.push(b']');
            Ok(())
        }
        Node::Whole {
            path,
            template,
            expr,
        } => match eval(expr, path, template, now, env)? {
            Evaluated::Seconds(seconds) => write_json(&seconds, out),
            Evaluated::Text(text) => write_json(&text, out),
        },
        Node::Text { path, pieces } => {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Literal(literal) => text.push_str(literal),
                    Piece::Template { template, expr } => {
                        match eval(expr, path, template, now, env)? {
                            Evaluated::Seconds(seconds) => text.push_str(&seconds.to_string()),
                            Evaluated::Text(value) => text.push_str(&value),
                        }
                    }
                }
            }
            write_json(&text, out)
        }
    }
}

fn write_json(value: &(impl Serialize + ?Sized), out: &mut Vec<u8>) -> Result<(), TemplateError> {
    serde_json::to_writer(out, value).map_err(|e| TemplateError::Json(e.to_string()))
}

enum Evaluated {
    Seconds(u64),
    Text(String),
}

fn eval(
    expr: &Expr,
    path: &str,
    template: &str,
    now: u64,
    env: &dyn Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<Evaluated, TemplateError> {
    match expr {
        Expr::Now(offset) => now
            .checked_add_signed(*offset)
            .map(Evaluated::Seconds)
            .ok_or_else(|| TemplateError::TimeOutOfRange {
                path: path.to_owned(),
                template: template.to_owned(),
            }),
        // A v4 UUID from the thread's CSPRNG: `Uuid::new_v4` costs a getrandom syscall per JWT.
        Expr::Uuid => Ok(Evaluated::Text(
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
        )),
        Expr::Env(name) => env(name)
            .map(Evaluated::Text)
            .map_err(|e| env_error(path, name, &e)),
    }
}

fn env_error(path: &str, name: &str, error: &std::env::VarError) -> TemplateError {
    let (path, name) = (path.to_owned(), name.to_owned());
    match error {
        std::env::VarError::NotPresent => TemplateError::MissingEnv { path, name },
        std::env::VarError::NotUnicode(_) => TemplateError::EnvNotUnicode { path, name },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn parse_all_lists_every_problem_and_parse_the_first() {
        let payload =
            json!({ "a": "{{nw}} {{now}} {{x}}", "exp": "x-{{now}}", "n": { "b": "{{" } });
        let Value::Object(map) = payload else {
            panic!("an object")
        };
        let errors = PayloadTemplate::parse_all(&map).expect_err("problems");
        let paths: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{paths:#?}");
        assert!(paths[0].starts_with("payload.a: unknown template \"{{nw}}\""));
        assert!(paths[1].starts_with("payload.a: unknown template \"{{x}}\""));
        assert!(paths[2].starts_with("payload.n.b: \"{{\" has no closing"));
        assert!(paths[3].starts_with("payload.exp must be a number"));
        assert_eq!(
            PayloadTemplate::parse(&map).map(|_| ()),
            Err(errors.into_iter().next().expect("one"))
        );
    }

    fn template(value: Value) -> Result<PayloadTemplate, TemplateError> {
        match value {
            Value::Object(map) => PayloadTemplate::parse(&map),
            other => panic!("test payload must be an object, got {other}"),
        }
    }

    fn json_of(rendered: &[u8]) -> Value {
        serde_json::from_slice(rendered).expect("render writes JSON")
    }

    fn no_env(_: &str) -> Result<String, std::env::VarError> {
        Err(std::env::VarError::NotPresent)
    }

    fn render(value: Value) -> Result<Value, TemplateError> {
        Ok(json_of(&template(value)?.render(NOW, &no_env)?))
    }

    #[test]
    fn time_claims_must_be_numbers() {
        for ok in [
            json!({"exp": 1_700_000_000, "iat": "{{now}}", "nbf": "{{plus currentTimeSeconds -5}}"}),
            json!({"nested": {"exp": "x-{{now}}"}}),
        ] {
            assert!(template(ok.clone()).is_ok(), "{ok}");
        }
        for (payload, claim) in [
            (json!({"exp": "x-{{now}}"}), "exp"),
            (json!({"exp": "{{env.EXP}}"}), "exp"),
            (json!({"iat": "2024-01-01"}), "iat"),
            (json!({"nbf": "{{uuid}}"}), "nbf"),
            (json!({"exp": [1]}), "exp"),
        ] {
            assert_eq!(
                template(payload.clone()).err(),
                Some(TemplateError::NotNumericDate {
                    path: format!("payload.{claim}")
                }),
                "{payload}"
            );
        }
    }

    #[test]
    fn only_a_uuid_makes_tokens_of_one_second_differ() {
        let fixed = [
            json!({"iss": "a", "iat": "{{now}}", "exp": "{{now + 60}}", "sub": "{{env.USER}}"}),
            json!({"nested": {"list": ["{{now}}", "x-{{env.USER}}", 3]}}),
        ];
        for payload in fixed {
            let t = template(payload.clone()).expect("parses");
            assert!(!t.differs_within_a_second(), "{payload}");
        }
        let varying = [
            json!({"jti": "{{uuid}}"}),
            json!({"nested": {"list": [1, {"id": "call-{{uuid}}"}]}}),
        ];
        for payload in varying {
            let t = template(payload.clone()).expect("parses");
            assert!(t.differs_within_a_second(), "{payload}");
        }
    }

    #[test]
    fn time_templates_become_json_integers() {
        let out = render(json!({
            "iat": "{{now}}",
            "exp": "{{now + 600}}",
            "nbf": "{{ now-30 }}",
            "a": "{{now   +   5}}",
            "b": "{{currentTimeSeconds}}",
            "c": "{{plus currentTimeSeconds 3600}}",
            "d": "{{ plus  currentTimeSeconds  -60 }}",
        }))
        .expect("renders");
        assert_eq!(
            out,
            json!({
                "iat": NOW, "exp": NOW + 600, "nbf": NOW - 30, "a": NOW + 5,
                "b": NOW, "c": NOW + 3600, "d": NOW - 60,
            })
        );
        assert!(
            out["exp"].is_u64(),
            "exp must be an integer, not {}",
            out["exp"]
        );
        let t = template(json!({"exp": "{{now + 600}}", "iss": "a\"b"})).expect("parses");
        let text = String::from_utf8(t.render(NOW, &no_env).expect("renders")).expect("utf-8");
        assert_eq!(
            text,
            format!("{{\"exp\":{},\"iss\":\"a\\\"b\"}}", NOW + 600)
        );
    }

    #[test]
    fn templates_inside_longer_strings_are_interpolated_as_text() {
        let out = render(
            json!({ "jti": "svc-{{now}}-{{ now + 1 }}.", "plain": "no {templates} here }}" }),
        )
        .expect("renders");
        assert_eq!(out["jti"], json!(format!("svc-{NOW}-{}.", NOW + 1)));
        assert_eq!(out["plain"], json!("no {templates} here }}"));
    }

    #[test]
    fn uuid_is_fresh_per_render() {
        let t = template(json!({ "jti": "{{uuid}}", "sid": "s-{{uuid}}" })).expect("parses");
        let a = json_of(&t.render(NOW, &no_env).expect("renders"));
        let b = json_of(&t.render(NOW, &no_env).expect("renders"));
        let jti = a["jti"].as_str().expect("uuid is a string");
        let parsed = uuid::Uuid::parse_str(jti).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4, "{jti}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{jti}");
        assert_ne!(a["jti"], b["jti"]);
        assert_ne!(a["sid"], b["sid"]);
        assert!(
            a["sid"]
                .as_str()
                .is_some_and(|s| s.starts_with("s-") && s.len() == 38)
        );
    }

    #[test]
    fn env_templates_read_the_lookup_and_name_missing_variables() {
        let t =
            template(json!({ "sub": "{{env.SERVICE_USER}}", "aud": ["api", "{{env.TENANT}}-x"] }))
                .expect("parses");
        let env = |name: &str| match name {
            "SERVICE_USER" => Ok("svc-orders".to_owned()),
            "TENANT" => Ok("42".to_owned()),
            _ => Err(std::env::VarError::NotPresent),
        };
        let out = json_of(&t.render(NOW, &env).expect("renders"));
        // Env values stay strings even when they look like numbers.
        assert_eq!(out, json!({ "sub": "svc-orders", "aud": ["api", "42-x"] }));

        let only_user = |name: &str| {
            (name == "SERVICE_USER")
                .then(|| "u".to_owned())
                .ok_or(std::env::VarError::NotPresent)
        };
        let err = t.render(NOW, &only_user).expect_err("TENANT is missing");
        assert_eq!(
            err,
            TemplateError::MissingEnv {
                path: "payload.aud[1]".into(),
                name: "TENANT".into()
            }
        );
        assert!(
            err.to_string().contains("environment variable TENANT"),
            "{err}"
        );
    }

    #[test]
    fn missing_env_names_every_unset_variable_once_with_its_path() {
        let t = template(json!({
            "sub": "{{env.SET}}",
            "aud": ["{{env.GONE}}-x", {"deep": "{{env.GONE}}/{{env.ALSO}}"}],
        }))
        .expect("parses");
        let env = |name: &str| {
            (name == "SET")
                .then(|| "v".to_owned())
                .ok_or(std::env::VarError::NotPresent)
        };
        let missing: Vec<String> = t.missing_env(&env).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            missing,
            [
                "payload.aud[0]: the template {{env.GONE}} needs the environment variable GONE, but it is not set",
                "payload.aud[1].deep: the template {{env.GONE}} needs the environment variable GONE, but it is not set",
                "payload.aud[1].deep: the template {{env.ALSO}} needs the environment variable ALSO, but it is not set",
            ]
        );
        assert!(t.missing_env(&|_| Ok("v".to_owned())).is_empty());
        // Set, but not to UTF-8: said so, not "not set" (which sends one to the unit's
        // environment, where the variable is).
        let latin1 = |_: &str| {
            Err(std::env::VarError::NotUnicode(
                std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]),
            ))
        };
        let said: Vec<String> = t
            .missing_env(&latin1)
            .iter()
            .map(|e| e.to_string())
            .collect();
        let sub = "payload.sub: the template {{env.SET}} needs the environment variable SET, which is set but is not valid UTF-8";
        assert!(said.iter().any(|s| s == sub), "{said:?}");
        assert!(!crate::config::is_unset_variable(sub));
        let err = t.render(NOW, &latin1).expect_err("not UTF-8");
        assert!(matches!(err, TemplateError::EnvNotUnicode { .. }), "{err}");
    }

    #[test]
    fn whole_env_template_stays_a_string() {
        let t = template(json!({ "n": "{{env.N}}" })).expect("parses");
        let out = json_of(&t.render(NOW, &|_| Ok("600".to_owned())).expect("renders"));
        assert_eq!(out["n"], json!("600"));
    }

    #[test]
    fn unknown_templates_name_their_path_and_text() {
        let err = template(json!({ "claims": { "exp": "{{now * 2}}" } })).expect_err("unknown");
        assert_eq!(
            err,
            TemplateError::Unknown {
                path: "payload.claims.exp".into(),
                template: "now * 2".into()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("payload.claims.exp") && message.contains("{{now * 2}}"),
            "{message}"
        );
        assert!(
            message.contains("{{uuid}}"),
            "message lists the supported forms: {message}"
        );

        for bad in [
            "{{}}",
            "{{nowish}}",
            "{{now + 1.5}}",
            "{{now + -5}}",
            "{{env.}}",
            "{{env.A-B}}",
            "{{UUID}}",
            "{{plus now 5}}",
        ] {
            let err = template(json!({ "x": [1, bad] })).expect_err(bad);
            assert!(
                matches!(&err, TemplateError::Unknown { path, .. } if path == "payload.x[1]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        let err =
            template(json!({ "https://example.com/claim": "{{nope}}" })).expect_err("unknown");
        assert!(
            err.to_string()
                .starts_with("payload[\"https://example.com/claim\"]:"),
            "{err}"
        );
    }

    #[test]
    fn unterminated_braces_are_an_error() {
        let err = template(json!({ "sub": "user-{{uuid" })).expect_err("unterminated");
        assert_eq!(
            err,
            TemplateError::Unterminated {
                path: "payload.sub".into(),
                text: "user-{{uuid".into()
            }
        );
        assert!(err.to_string().contains("no closing \"}}\""), "{err}");
        assert!(template(json!({ "sub": "{{now}} and {{" })).is_err());
    }

    #[test]
    fn non_string_values_pass_through() {
        let payload = json!({ "n": 1.5, "b": true, "z": null, "o": { "deep": [1, "x", { "k": 2 }] }, "e": "" });
        assert_eq!(render(payload.clone()).expect("renders"), payload);
    }

    #[test]
    fn time_before_epoch_is_an_error() {
        let t = template(json!({ "nbf": "{{now - 10}}" })).expect("parses");
        let err = t.render(5, &no_env).expect_err("before 1970");
        assert!(
            matches!(err, TemplateError::TimeOutOfRange { ref path, .. } if path == "payload.nbf"),
            "{err}"
        );
    }

    #[test]
    fn an_offset_no_token_could_ever_carry_is_refused_when_parsed() {
        let err = template(json!({ "nbf": "{{now - 2000000000000}}" })).expect_err("refused");
        assert!(err.to_string().contains("at most 100 years"), "{err}");
        // 63 years back: within a century, yet before 1970 whenever it is signed from now on.
        let err = template(json!({ "nbf": "{{now - 2000000000}}" })).expect_err("refused");
        assert!(
            err.to_string()
                .contains("an offset back is at most the time since 1970"),
            "{err}"
        );
        template(json!({ "nbf": "{{now - 1500000000}}" })).expect("47 years back");
        assert!(template(json!({ "exp": "{{plus currentTimeSeconds 9999999999}}" })).is_err());
        // Up to a century either way parses.
        template(json!({ "exp": "{{now + 3153600000}}" })).expect("100 years");
    }

    #[test]
    fn has_claim_looks_at_top_level_keys_only() {
        let t = template(json!({ "exp": "{{now + 60}}", "inner": { "iat": 1 } })).expect("parses");
        assert!(t.has_claim("exp"));
        assert!(!t.has_claim("iat"));
        assert!(!t.has_claim("nbf"));
    }
}
