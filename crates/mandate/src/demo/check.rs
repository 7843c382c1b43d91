//! The demo's evidence checks: each step compares what it saw with what the story claims, and a
//! difference stops the demo with both values printed.

use std::fmt;

use serde_json::Value;

/// Evidence that differs from what the step expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What was looked at, e.g. "delete_record through the gateway: HTTP status".
    pub what: String,
    pub expected: String,
    pub seen: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected {}, saw {}", self.what, self.expected, self.seen)
    }
}

impl std::error::Error for Mismatch {}

/// `seen` must equal `expected`.
pub fn equal<T: PartialEq + fmt::Display + ?Sized>(what: &str, expected: &T, seen: &T) -> Result<(), Mismatch> {
    if expected == seen {
        return Ok(());
    }
    Err(Mismatch { what: what.to_owned(), expected: expected.to_string(), seen: seen.to_string() })
}

/// An HTTP answer must have `expected` status; the body is shown when it does not.
pub fn status(what: &str, expected: u16, seen: u16, body: &Value) -> Result<(), Mismatch> {
    if expected == seen {
        return Ok(());
    }
    Err(Mismatch {
        what: format!("{what}: HTTP status"),
        expected: expected.to_string(),
        seen: format!("{seen} {body}"),
    })
}

/// A string claim or member of a JSON object must equal `expected`.
pub fn text(what: &str, object: &Value, name: &str, expected: &str) -> Result<(), Mismatch> {
    let seen = object.get(name).map_or_else(|| "(absent)".to_owned(), shown);
    equal(&format!("{what}: {name}"), expected, seen.as_str())
}

/// `condition` must hold; `seen` describes what was found instead.
pub fn holds(what: &str, condition: bool, expected: &str, seen: impl fmt::Display) -> Result<(), Mismatch> {
    if condition {
        return Ok(());
    }
    Err(Mismatch { what: what.to_owned(), expected: expected.to_owned(), seen: seen.to_string() })
}

/// A JSON value as printed in evidence lines: strings without their quotes.
pub fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_wrong_status_is_a_mismatch_naming_both_values() {
        let refused = status("delete_record", 403, 200, &json!({"result": "deleted"})).unwrap_err();
        assert_eq!(refused.expected, "403");
        assert!(refused.seen.starts_with("200 "), "{refused}");
        assert!(refused.to_string().contains("expected 403, saw 200"), "{refused}");
        assert!(status("delete_record", 403, 403, &Value::Null).is_ok());
    }

    #[test]
    fn claims_are_compared_exactly_and_absent_ones_are_named() {
        let claims = json!({"sub": "alice", "scope": "read write"});
        assert!(text("token", &claims, "sub", "alice").is_ok());
        assert_eq!(text("token", &claims, "scope", "read").unwrap_err().seen, "read write");
        assert_eq!(text("token", &claims, "act", "bot").unwrap_err().seen, "(absent)");
        assert_eq!(text("token", &json!({"n": 3}), "n", "4").unwrap_err().seen, "3");
    }

    #[test]
    fn conditions_report_what_was_seen() {
        assert!(holds("hops", true, "3 hops", 3).is_ok());
        let refused = holds("hops", false, "3 hops", "2 hops").unwrap_err();
        assert_eq!((refused.expected.as_str(), refused.seen.as_str()), ("3 hops", "2 hops"));
        assert!(equal("n", "a", "a").is_ok());
        assert_eq!(equal("n", "a", "b").unwrap_err().to_string(), "n: expected a, saw b");
    }
}
