//! Step-up approval of single tool calls: the RFC 9396 `authorization_details` entry that names
//! one call (tool + hash of its canonical arguments at this gateway), matching an approved token
//! against the call it is presented with, and the per-process set of spent approval tokens.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// The `type` of an `authorization_details` entry approving one tool call.
pub const APPROVAL_TYPE: &str = "mandate_tool_call";
/// The one action such an entry grants.
pub const APPROVAL_ACTION: &str = "call";
/// How many spent approvals a gateway remembers by default (entries leave when their token expires).
pub const DEFAULT_MAX_SPENT: usize = 100_000;

/// RFC 8785-style canonical JSON: object keys sorted by UTF-16 code units, no whitespace;
/// strings and numbers as serde_json writes them. The same value always gives the same text,
/// whatever order its keys arrived in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (index, (key, child)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(child, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// base64url (no padding) SHA-256 of the canonical arguments; absent arguments count as `{}`
/// (MCP treats both alike).
pub fn arguments_sha256(arguments: Option<&Value>) -> String {
    let canonical = match arguments {
        Some(value) => canonical_json(value),
        None => "{}".to_owned(),
    };
    URL_SAFE_NO_PAD.encode(mandate_crypto::secret::sha256(canonical.as_bytes()))
}

/// One tool call as an approval names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTarget {
    /// The gateway's resource identifier (`locations`).
    pub resource: String,
    pub tool: String,
    pub arguments_sha256: String,
}

impl ApprovalTarget {
    /// The `authorization_details` entry an agent asks its owner to approve.
    pub fn detail(&self) -> Value {
        json!({
            "type": APPROVAL_TYPE,
            "locations": [self.resource],
            "actions": [APPROVAL_ACTION],
            "tool": self.tool,
            "arguments_sha256": self.arguments_sha256,
        })
    }

    /// Whether an approved entry names exactly this call.
    pub fn matches(&self, entry: &Value) -> bool {
        let strings = |field: &str| {
            entry.get(field).and_then(Value::as_array).map(|items| items.iter().filter_map(Value::as_str).collect())
        };
        let locations: Option<Vec<&str>> = strings("locations");
        let actions: Option<Vec<&str>> = strings("actions");
        entry.get("type").and_then(Value::as_str) == Some(APPROVAL_TYPE)
            && locations.as_deref() == Some(&[self.resource.as_str()][..])
            && actions.as_deref() == Some(&[APPROVAL_ACTION][..])
            && entry.get("tool").and_then(Value::as_str) == Some(self.tool.as_str())
            && entry.get("arguments_sha256").and_then(Value::as_str) == Some(self.arguments_sha256.as_str())
    }
}

/// The `mandate_tool_call` entries of a token's `authorization_details` claim; `None` when it
/// has none, i.e. when the token is not an approval for this gateway's tool calls.
pub fn approval_entries(claims: &Value) -> Option<Vec<&Value>> {
    let entries: Vec<&Value> = claims
        .get("authorization_details")
        .and_then(Value::as_array)?
        .iter()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some(APPROVAL_TYPE))
        .collect();
    (!entries.is_empty()).then_some(entries)
}

/// Why an approval token cannot be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpendError {
    #[error("this approval was already used")]
    Spent,
    #[error("too many unexpired approvals are remembered; try again later")]
    Full,
}

/// The `jti`s of approval tokens already used at this gateway process, kept until the token
/// expires. Full of unexpired entries, it refuses new approvals rather than forget a spent one.
pub struct SpentApprovals {
    spent: Mutex<HashMap<String, i64>>,
    capacity: usize,
}

impl SpentApprovals {
    pub fn new(capacity: usize) -> Self {
        Self { spent: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    pub fn is_spent(&self, jti: &str) -> bool {
        self.spent.lock().contains_key(jti)
    }

    /// Marks `jti` (valid until `exp`, Unix seconds) used, unless it already was.
    pub fn spend(&self, jti: &str, exp: i64, now_secs: i64) -> Result<(), SpendError> {
        let mut spent = self.spent.lock();
        if spent.contains_key(jti) {
            return Err(SpendError::Spent);
        }
        if spent.len() >= self.capacity {
            spent.retain(|_, expires| *expires >= now_secs);
            if spent.len() >= self.capacity {
                return Err(SpendError::Full);
            }
        }
        spent.insert(jti.to_owned(), exp);
        Ok(())
    }

    /// Gives back an approval spent for a call that was refused after all.
    pub fn unspend(&self, jti: &str) {
        self.spent.lock().remove(jti);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(tool: &str, arguments: &Value) -> ApprovalTarget {
        ApprovalTarget {
            resource: "https://gw.example/mcp".into(),
            tool: tool.into(),
            arguments_sha256: arguments_sha256(Some(arguments)),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let a: Value = serde_json::from_str(r#"{ "b": 1, "a": {"y": [1, 2], "x": "s"} }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(arguments_sha256(Some(&a)), arguments_sha256(Some(&b)));
        assert_ne!(arguments_sha256(Some(&a)), arguments_sha256(Some(&json!({"a": {}, "b": 1}))));
        assert_eq!(arguments_sha256(None), arguments_sha256(Some(&json!({}))));
        // SHA-256 of "{}", base64url.
        assert_eq!(arguments_sha256(None), "RBNvo1WzZ4oRRq0W9-hknpT7T8If536DEMBg9hyq_4o");
    }

    #[test]
    fn canonical_json_orders_keys_by_utf16() {
        // U+E000 sorts before U+1F600 in UTF-16 (surrogates), after it in UTF-8.
        let value = json!({"\u{1F600}": 1, "\u{E000}": 2});
        assert_eq!(canonical_json(&value), "{\"\u{1F600}\":1,\"\u{E000}\":2}");
    }

    #[test]
    fn an_approval_matches_exactly_its_own_call() {
        let approved = target("transfer", &json!({"to": "bob", "amount": 5}));
        let entry = approved.detail();
        assert!(approved.matches(&entry));
        assert!(target("transfer", &json!({"amount": 5, "to": "bob"})).matches(&entry), "key order is irrelevant");
        assert!(!target("transfer", &json!({"to": "bob", "amount": 6})).matches(&entry), "other arguments");
        assert!(!target("delete", &json!({"to": "bob", "amount": 5})).matches(&entry), "another tool");
        let mut elsewhere = approved.clone();
        elsewhere.resource = "https://other.example/mcp".into();
        assert!(!elsewhere.matches(&entry), "another gateway");
        for (field, value) in [
            ("type", json!("db_action")),
            ("actions", json!(["call", "delete"])),
            ("locations", json!(["https://gw.example/mcp", "https://other.example/mcp"])),
            ("tool", json!(null)),
        ] {
            let mut changed = entry.clone();
            changed[field] = value;
            assert!(!approved.matches(&changed), "{field}");
        }
    }

    #[test]
    fn only_tool_call_entries_make_an_approval_token() {
        let claims = json!({"authorization_details": [{"type": "db_action"}, {"type": APPROVAL_TYPE, "tool": "x"}]});
        assert_eq!(approval_entries(&claims).map(|e| e.len()), Some(1));
        assert!(approval_entries(&json!({"authorization_details": [{"type": "db_action"}]})).is_none());
        assert!(approval_entries(&json!({"sub": "alice"})).is_none());
    }

    #[test]
    fn an_approval_is_spent_once() {
        let spent = SpentApprovals::new(2);
        assert_eq!(spent.spend("a", 100, 10), Ok(()));
        assert!(spent.is_spent("a"));
        assert_eq!(spent.spend("a", 100, 10), Err(SpendError::Spent));
        spent.unspend("a");
        assert_eq!(spent.spend("a", 100, 10), Ok(()));
    }

    #[test]
    fn a_full_set_forgets_only_expired_approvals() {
        let spent = SpentApprovals::new(2);
        spent.spend("old", 50, 10).unwrap();
        spent.spend("live", 500, 10).unwrap();
        assert_eq!(spent.spend("new", 500, 10), Err(SpendError::Full), "nothing has expired yet");
        assert_eq!(spent.spend("new", 500, 100), Ok(()), "`old` expired at 50");
        assert_eq!(spent.spend("live", 500, 100), Err(SpendError::Spent), "unexpired entries are kept");
    }
}
