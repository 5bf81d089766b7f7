//! A JWT payload as written in TOML, turned into the JSON that is signed. TOML's dates and
//! times and its `nan`/`inf` have no JSON form: each is refused at load, by its key path.

use serde_json::{Map, Number, Value};

/// The claims `PayloadTemplate` refuses unless they are numbers: a date there is said by
/// its message (a number of seconds since 1970), not by this one.
const TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];

/// The payload as JSON, and a problem per value JSON cannot carry (empty when there is
/// none). A date or time stands in the JSON as its text, so that the payload's other
/// problems are still found; nothing is signed while a problem is listed.
pub(super) fn payload_json(table: &toml::Table) -> (Map<String, Value>, Vec<String>) {
    let mut problems = Vec::new();
    let map = table
        .iter()
        .map(|(key, value)| {
            let top = !TIME_CLAIMS.contains(&key.as_str());
            let place = format!("auth.payload.{key}");
            (key.clone(), json_of(&place, value, top, &mut problems))
        })
        .collect();
    (map, problems)
}

/// `say_date`: false for a top-level time claim, which the template refuses itself.
fn json_of(place: &str, value: &toml::Value, say_date: bool, problems: &mut Vec<String>) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Float(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => {
                problems.push(format!(
                    "{place} is {f}, which JSON has no number for: write a finite number, or a quoted string"
                ));
                Value::Null
            }
        },
        toml::Value::Datetime(datetime) => {
            // Deserialized straight into JSON, toml would hand over its private marker
            // object ({"$__toml_private_datetime": …}), which no identity provider reads.
            if say_date {
                problems.push(date_problem(place, datetime));
            }
            Value::String(datetime.to_string())
        }
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| json_of(&format!("{place}[{i}]"), item, true, problems))
                .collect(),
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| {
                    let place = format!("{place}.{key}");
                    (key.clone(), json_of(&place, value, true, problems))
                })
                .collect(),
        ),
    }
}

/// What to say of a TOML date or time where a JSON value goes out: how to write it.
pub(super) fn date_problem(place: &str, datetime: &toml::value::Datetime) -> String {
    format!(
        "{place} is a TOML date/time ({datetime}), which JSON has no type for: write it as a \
         quoted string (\"{datetime}\"), or as a number of seconds since 1970 if the claim is \
         a NumericDate"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn dates_and_times_at_any_depth_are_refused_by_their_key_path() {
        let (json, problems) = payload_json(&table(
            "iss = \"p\"\nd = 2026-12-01\nt = 07:32:00\nldt = 2026-12-01T07:32:00\n\
             x = 1979-05-27T07:32:00Z\nlist = [1, 2026-12-01]\n\
             nested = { deeper = { at = 1979-05-27 07:32:00+02:00 } }\n\
             tables = [{ when = 2026-12-01 }]\n",
        ));
        let places: Vec<&str> = problems
            .iter()
            .filter_map(|p| p.split(" is a TOML date/time (").next())
            .collect();
        assert_eq!(
            places,
            [
                "auth.payload.d",
                "auth.payload.ldt",
                "auth.payload.list[1]",
                "auth.payload.nested.deeper.at",
                "auth.payload.t",
                "auth.payload.tables[0].when",
                "auth.payload.x",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[0].contains("(2026-12-01)") && problems[0].contains("(\"2026-12-01\")"),
            "{}",
            problems[0]
        );
        // What stands in for them is text, never toml's private marker object.
        let text = Value::Object(json).to_string();
        assert!(!text.contains("toml_private"), "{text}");
        assert!(text.contains("\"t\":\"07:32:00\""), "{text}");
    }

    #[test]
    fn a_time_claim_written_as_a_date_is_left_to_the_templates_refusal() {
        let (json, problems) = payload_json(&table("exp = 2026-12-01T00:00:00Z\nnbf = 1\n"));
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(json["exp"], "2026-12-01T00:00:00Z");
        // Nested, `exp` is any claim's name.
        let (_, problems) = payload_json(&table("inner = { exp = 2026-12-01 }\n"));
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn nan_and_inf_are_refused_and_other_values_kept() {
        let (json, problems) = payload_json(&table(
            "a = nan\nb = -inf\nc = 1.5\nd = -7\ne = true\nf = \"s\"\ng = []\nh = {}\n",
        ));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("auth.payload.a is NaN"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("auth.payload.b is -inf"),
            "{problems:?}"
        );
        assert_eq!(
            Value::Object(json).to_string(),
            r#"{"a":null,"b":null,"c":1.5,"d":-7,"e":true,"f":"s","g":[],"h":{}}"#
        );
    }
}
