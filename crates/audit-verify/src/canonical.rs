//! RFC 8785 (JCS) canonical bytes for the restricted JSON value set audit events use.

use serde_json::{Map, Number, Value};

/// Largest integer magnitude JCS can carry losslessly: I-JSON limits integers to
/// `[-(2^53 - 1), 2^53 - 1]` because every JCS number is an IEEE-754 double.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical form in the audit format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// Floats are outside the audit format; JCS would need ES6 number formatting for them.
    #[error("number {0} is not an integer (floats are not allowed in audit events)")]
    NotAnInteger(String),
    /// Integers beyond ±(2^53 - 1) cannot round-trip through JCS's IEEE-754 numbers.
    #[error("integer {0} is outside ±(2^53 - 1)")]
    IntegerOutOfRange(String),
}

/// Serialises `value` as RFC 8785 (JCS) bytes.
///
/// Supports the value set audit events use: strings, integers with `|n| < 2^53`, booleans,
/// null, arrays and objects. Object members are sorted by the UTF-16 code units of their keys,
/// as JCS requires, whatever order the map iterates in. Floats (including `-0`) are rejected
/// rather than formatted, since events never contain them.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    write_value(&mut out, value)?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_integer(out, number)?,
        Value::String(text) => write_string(out, text),
        Value::Array(items) => write_array(out, items)?,
        Value::Object(members) => write_object(out, members)?,
    }
    Ok(())
}

fn write_integer(out: &mut Vec<u8>, number: &Number) -> Result<(), CanonicalError> {
    let magnitude = if let Some(n) = number.as_u64() {
        n
    } else if let Some(n) = number.as_i64() {
        n.unsigned_abs()
    } else {
        return Err(CanonicalError::NotAnInteger(number.to_string()));
    };
    if magnitude > MAX_SAFE_INTEGER {
        return Err(CanonicalError::IntegerOutOfRange(number.to_string()));
    }
    // For safe integers ES6 `Number.prototype.toString` is plain decimal, which is what
    // serde_json's integer Display prints.
    out.extend_from_slice(number.to_string().as_bytes());
    Ok(())
}

/// JCS string escaping: only `"`, `\` and C0 controls are escaped; the five controls with a
/// short form use it, the rest use lowercase `\u00xx`. Everything else is raw UTF-8.
fn write_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut buf = [0u8; 4];
    for ch in text.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if u32::from(c) < 0x20 => {
                let byte = u32::from(c) as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[byte >> 4]);
                out.push(HEX[byte & 0x0f]);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    out.push(b'"');
}

fn write_array(out: &mut Vec<u8>, items: &[Value]) -> Result<(), CanonicalError> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(out, item)?;
    }
    out.push(b']');
    Ok(())
}

fn write_object(out: &mut Vec<u8>, members: &Map<String, Value>) -> Result<(), CanonicalError> {
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    // JCS orders by UTF-16 code units. This equals byte order except for keys mixing astral
    // characters with U+E000..U+FFFF; sorting here also keeps us independent of whether
    // serde_json's `preserve_order` feature is switched on elsewhere in a build.
    sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push(b'{');
    for (i, (key, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value)?;
    }
    out.push(b'}');
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn canonical_string(value: &Value) -> String {
        String::from_utf8(canonical_json(value).unwrap()).unwrap()
    }

    #[test]
    fn objects_are_sorted_and_compact() {
        let value = json!({"b": [1, true, null], "a": {"z": "x", "y": -3}, "": false});
        assert_eq!(canonical_string(&value), r#"{"":false,"a":{"y":-3,"z":"x"},"b":[1,true,null]}"#);
    }

    #[test]
    fn escaping_matches_jcs_and_serde_json() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        let text = format!("{all_controls}\"\\/\u{7f}\u{2028}é😀");
        let expected = concat!(
            r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
            r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c"#,
            r#"\u001d\u001e\u001f\"\\/"#,
            "\u{7f}\u{2028}é😀\""
        );
        assert_eq!(canonical_string(&json!(text)), expected);
        // serde_json's compact writer is what the server uses; both must agree.
        assert_eq!(serde_json::to_string(&text).unwrap(), expected);
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+1F600 is D83D DE00 in UTF-16, which sorts before U+FF21; in UTF-8 it sorts after.
        let value = json!({"\u{ff21}": 1, "\u{1f600}": 2});
        assert_eq!(canonical_string(&value), "{\"\u{1f600}\":2,\"\u{ff21}\":1}");
    }

    #[test]
    fn integers_must_be_safe() {
        assert_eq!(canonical_string(&json!(9_007_199_254_740_991_u64)), "9007199254740991");
        assert_eq!(canonical_string(&json!(-9_007_199_254_740_991_i64)), "-9007199254740991");
        assert!(matches!(canonical_json(&json!(9_007_199_254_740_992_u64)), Err(CanonicalError::IntegerOutOfRange(_))));
        assert!(matches!(canonical_json(&json!(i64::MIN)), Err(CanonicalError::IntegerOutOfRange(_))));
    }

    #[test]
    fn floats_are_rejected() {
        for text in ["1.0", "1e2", "-0", "0.5"] {
            let value: Value = serde_json::from_str(text).unwrap();
            let err = canonical_json(&json!({ "x": [value] })).unwrap_err();
            assert!(matches!(err, CanonicalError::NotAnInteger(_)), "{text}");
            assert!(err.to_string().contains("not an integer"));
        }
    }

    #[test]
    fn matches_python_json_dumps_for_a_full_event() {
        // Expected bytes from Python 3.11:
        // json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        let event = json!({
            "v": 1, "seq": 42, "prev": "00ff", "ts": "2026-11-23T09:00:00.123Z",
            "action": "token.issue", "decision": "deny", "reason": "invalid_target",
            "detail": "tab\there \"quoted\" \u{1} café 😀", "agent": null, "owner": "ops@example",
            "client": "c1", "resource": "https://api.example/", "scope": "read write",
            "jti": null, "correlation_id": "req-1"
        });
        let python = concat!(
            r#"{"action":"token.issue","agent":null,"client":"c1","correlation_id":"req-1","#,
            r#""decision":"deny","detail":"tab\there \"quoted\" \u0001 café 😀","jti":null,"#,
            r#""owner":"ops@example","prev":"00ff","reason":"invalid_target","#,
            r#""resource":"https://api.example/","scope":"read write","seq":42,"#,
            r#""ts":"2026-11-23T09:00:00.123Z","v":1}"#
        );
        assert_eq!(canonical_string(&event), python);
    }
}
