//! Just enough JSON-RPC to know what an MCP request does: its `method`, its `id` and, for
//! `tools/call`, the tool's name and arguments. The gateway records method and tool in the
//! Txn-Token's `tctx` and in its audit event; governance (budgets, approvals) uses the rest.

use serde_json::{Map, Value, json};

/// The most calls of one batch that are described (governance refuses longer batches).
pub const MAX_BATCH: usize = 32;
/// Longer method or tool names are cut (they end up in tokens and audit entries).
const MAX_NAME: usize = 128;

/// One JSON-RPC request (or notification) of an MCP session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCall {
    pub method: String,
    /// `params.name` of a `tools/call`.
    pub tool: Option<String>,
    /// `params.arguments` of a `tools/call` (bounded by the body limit the gateway reads).
    pub arguments: Option<Value>,
    /// The JSON-RPC `id` (a string or number); `None` for notifications.
    pub id: Option<Value>,
}

/// What a JSON body holds as JSON-RPC: its calls (responses a client posts back carry no method
/// and are skipped; at most [`MAX_BATCH`] of a batch are described) and its number of messages
/// (a batch's length, else 1; 0 when the body is not JSON).
#[derive(Debug, Default)]
pub struct Inspected {
    pub calls: Vec<McpCall>,
    pub messages: usize,
}

/// Parses a JSON body once for everything the gateway needs from it.
pub fn inspect(body: &[u8]) -> Inspected {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(batch)) => {
            Inspected { calls: batch.iter().take(MAX_BATCH).filter_map(call).collect(), messages: batch.len() }
        }
        Ok(single) => Inspected { calls: call(&single).into_iter().collect(), messages: 1 },
        Err(_) => Inspected::default(),
    }
}

fn call(message: &Value) -> Option<McpCall> {
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return None;
    }
    let method = message.get("method").and_then(Value::as_str)?;
    let is_tool_call = method == "tools/call";
    let tool = is_tool_call.then(|| message.pointer("/params/name").and_then(Value::as_str)).flatten().map(bounded);
    let arguments = is_tool_call.then(|| message.pointer("/params/arguments").cloned()).flatten();
    let id = message.get("id").filter(|id| id.is_string() || id.is_number()).cloned();
    Some(McpCall { method: bounded(method), tool, arguments, id })
}

fn bounded(name: &str) -> String {
    name.chars().take(MAX_NAME).collect()
}

/// The MCP part of a Txn-Token's `request_details`: `mcp_method` and `tool` for one call,
/// `mcp_calls` listing them for a batch.
pub fn details(calls: &[McpCall], into: &mut Map<String, Value>) {
    let describe = |c: &McpCall| {
        let mut one = Map::new();
        one.insert("mcp_method".into(), json!(c.method));
        if let Some(tool) = &c.tool {
            one.insert("tool".into(), json!(tool));
        }
        one
    };
    match calls {
        [] => {}
        [single] => into.extend(describe(single)),
        batch => {
            into.insert("mcp_calls".into(), Value::Array(batch.iter().map(|c| Value::Object(describe(c))).collect()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_names_its_tool() {
        let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add_note","arguments":{}}}"#;
        let call = McpCall {
            method: "tools/call".into(),
            tool: Some("add_note".into()),
            arguments: Some(json!({})),
            id: Some(json!(3)),
        };
        assert_eq!(inspect(body).calls, [call]);
        let mut out = Map::new();
        details(&inspect(body).calls, &mut out);
        assert_eq!(Value::Object(out), json!({"mcp_method": "tools/call", "tool": "add_note"}));
    }

    #[test]
    fn other_methods_carry_no_tool() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"ignored"}}"#;
        let call = McpCall { method: "tools/list".into(), tool: None, arguments: None, id: Some(json!(1)) };
        assert_eq!(inspect(body).calls, [call]);
    }

    #[test]
    fn batches_list_each_call() {
        let body = br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search"}}]"#;
        let mut out = Map::new();
        details(&inspect(body).calls, &mut out);
        assert_eq!(
            Value::Object(out),
            json!({"mcp_calls": [{"mcp_method": "notifications/initialized"},
                {"mcp_method": "tools/call", "tool": "search"}]})
        );
    }

    #[test]
    fn non_json_rpc_bodies_describe_nothing() {
        for body in [&b"not json"[..], br#"{"method":"x"}"#, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, b"42"] {
            assert!(inspect(body).calls.is_empty(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn arguments_and_ids_are_kept() {
        let body =
            br#"{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"t","arguments":{"q":[1,"x"]}}}"#;
        let call = &inspect(body).calls[0];
        assert_eq!((call.arguments.clone(), call.id.clone()), (Some(json!({"q": [1, "x"]})), Some(json!("a-1"))));
        let notification = br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}"#;
        let call = &inspect(notification).calls[0];
        assert_eq!((call.arguments.clone(), call.id.clone()), (None, None));
        let odd_id = br#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#;
        assert_eq!(inspect(odd_id).calls[0].id, None, "ids are strings or numbers");
    }

    #[test]
    fn long_names_are_cut() {
        let name = "t".repeat(1000);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}).to_string();
        assert_eq!(inspect(body.as_bytes()).calls[0].tool.as_deref().map(str::len), Some(MAX_NAME));
    }

    #[test]
    fn every_message_of_a_batch_is_counted_but_at_most_max_batch_are_described() {
        let one = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let batch = Value::Array(vec![one.clone(); MAX_BATCH + 5]).to_string();
        let inspected = inspect(batch.as_bytes());
        assert_eq!((inspected.calls.len(), inspected.messages), (MAX_BATCH, MAX_BATCH + 5));
        assert_eq!(inspect(one.to_string().as_bytes()).messages, 1);
        assert_eq!(inspect(b"not json").messages, 0);
    }
}
