//! JWT claims (JSON) as the protobuf `Struct` that ValidateJWTSVID answers with.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// A JSON object as a `Struct`; anything else becomes an empty one.
pub(crate) fn to_struct(claims: &serde_json::Value) -> Struct {
    match claims {
        serde_json::Value::Object(map) => object(map),
        _ => Struct::default(),
    }
}

fn object(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect() }
}

fn value(json: &serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        // Protobuf numbers are doubles; JWT times and counters fit exactly below 2^53.
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(value).collect() }),
        serde_json::Value::Object(map) => Kind::StructValue(object(map)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_keep_their_types() {
        let claims = serde_json::json!({
            "sub": "spiffe://mandate.local/agent/bot", "aud": ["a", "b"], "exp": 1_795_424_400,
            "nested": {"ok": true, "none": null}
        });
        let s = to_struct(&claims);
        assert_eq!(s.fields["sub"].kind, Some(Kind::StringValue("spiffe://mandate.local/agent/bot".into())));
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(1_795_424_400.0)));
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else { panic!("aud is a list") };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else { panic!("nested is a struct") };
        assert_eq!(nested.fields["ok"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(nested.fields["none"].kind, Some(Kind::NullValue(0)));
        assert!(to_struct(&serde_json::json!([1])).fields.is_empty());
    }
}
