//! Canonical event bytes (RFC 8785 JCS for our value set) and RFC 9162 leaf hashes.

use mandate_core::AuditEvent;
use mandate_core::clock::rfc3339_ms;
use mandate_store::{EncodedEntry, EntryEncoder, EntryPosition};
use serde_json::{Value, json};

use crate::merkle::leaf_hash;

/// The event as the JSON object that is hashed and exported, in its JCS form — written by the
/// verifier's own canonicaliser, never by `serde_json`'s map order (which keeps insertion order
/// when any crate in the build enables `preserve_order`, as Cedar does).
pub fn canonical_event(position: &EntryPosition, event: &AuditEvent) -> String {
    let value: Value = json!({
        "v": 1,
        "seq": position.seq,
        "prev": hex::encode(position.prev),
        "ts": rfc3339_ms(position.ts_ms),
        "action": event.action,
        "decision": event.decision.as_str(),
        "reason": event.reason,
        "detail": event.detail,
        "agent": event.agent,
        "owner": event.owner,
        "subject": event.subject,
        "client": event.client,
        "resource": event.resource,
        "scope": event.scope,
        "jti": event.jti,
        "txn": event.txn,
        "correlation_id": event.correlation_id,
    });
    // Every member is a string, null or an integer below 2^53 (seq), which JCS always accepts.
    let bytes = mandate_audit_verify::canonical_json(&value).expect("audit events hold only JCS-safe values");
    String::from_utf8(bytes).expect("JCS output is UTF-8")
}

/// The [`EntryEncoder`] the store calls inside its write transaction.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditEncoder;

impl EntryEncoder for AuditEncoder {
    fn encode(&self, position: &EntryPosition, event: &AuditEvent) -> EncodedEntry {
        let canonical = canonical_event(position, event);
        let leaf_hash = leaf_hash(canonical.as_bytes());
        EncodedEntry { canonical, leaf_hash }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_sorted_compact_and_escaped() {
        let mut event = AuditEvent::allow("token.issue", "c-1");
        event.detail = Some("line\nbreak \"q\" \u{1} é".into());
        let position = EntryPosition { seq: 3, prev: [0xab; 32], ts_ms: 1_795_424_400_123 };
        let text = canonical_event(&position, &event);
        assert!(text.starts_with(r#"{"action":"token.issue","agent":null,"client":null,"correlation_id":"c-1","decision":"allow","detail":"line\nbreak \"q\" \u0001 é","#), "{text}");
        assert!(text.ends_with(r#""ts":"2026-11-23T09:00:00.123Z","txn":null,"v":1}"#), "{text}");
        assert!(!text.contains(": ") && !text.contains(", "));
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, Value>>(&text).unwrap().keys().cloned().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn the_transaction_id_is_part_of_the_event() {
        let mut event = AuditEvent::allow("txn_token.issue", "c-1");
        event.txn = Some("0193-txn".into());
        let position = EntryPosition { seq: 0, prev: [0; 32], ts_ms: 0 };
        let text = canonical_event(&position, &event);
        assert!(text.contains(r#","txn":"0193-txn","#), "{text}");
    }
}
