//! The delegation graph: owners → agents → resources (from agents' scopes, owners' consents and
//! agents' delegation targets), plus the `act` chains of recent token exchanges, laid out in
//! three fixed columns and drawn as a server-generated SVG (escaped text, no script).

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mandate_audit::query::QueryParams;
use mandate_core::OAuthError;
use serde_json::Value;

use super::agents::{store_error, visible_agents};
use super::{Chrome, Viewer, unavailable};
use crate::AppState;

/// How far back (in audit events) the graph looks for token exchanges.
const EXCHANGE_SCAN_EVENTS: u64 = 5_000;
const COLUMN_X: [u32; 3] = [20, 330, 640];
const NODE_WIDTH: u32 = 250;
const NODE_HEIGHT: u32 = 30;
const ROW_HEIGHT: u32 = 44;
const TOP: u32 = 44;
/// Longest label drawn in a box; the full text is the node's tooltip.
const MAX_LABEL_CHARS: usize = 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    Principals = 0,
    Agents = 1,
    Resources = 2,
}

/// How two nodes are related.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Relation {
    Owns,
    MayUse,
    Consented,
    DelegationTarget,
    ActedFor,
    ActedAt,
}

impl Relation {
    fn label(self) -> &'static str {
        match self {
            Relation::Owns => "owns",
            Relation::MayUse => "may use",
            Relation::Consented => "consented",
            Relation::DelegationTarget => "delegation target",
            Relation::ActedFor => "acted for",
            Relation::ActedAt => "acted at",
        }
    }

    fn stroke(self) -> &'static str {
        match self {
            Relation::Owns => "#2b59c3",
            Relation::MayUse => "#5b6475",
            Relation::Consented => "#1d7d46",
            Relation::DelegationTarget => "#8a5a00",
            Relation::ActedFor | Relation::ActedAt => "#b3261e",
        }
    }

    fn dash(self) -> &'static str {
        match self {
            Relation::Consented | Relation::DelegationTarget => "6 4",
            Relation::ActedFor | Relation::ActedAt => "2 3",
            _ => "none",
        }
    }
}

/// A node: its column and name.
type NodeKey = (Column, String);
/// An edge: from, how, to.
type EdgeKey = (NodeKey, Relation, NodeKey);

/// The graph before layout: nodes keyed by (column, name), edges between keys with a note.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: BTreeSet<NodeKey>,
    edges: BTreeMap<EdgeKey, String>,
}

impl Graph {
    fn node(&mut self, column: Column, name: &str) -> NodeKey {
        let key = (column, name.to_owned());
        self.nodes.insert(key.clone());
        key
    }

    fn edge(&mut self, from: NodeKey, relation: Relation, to: NodeKey, note: &str) {
        self.edges.entry((from, relation, to)).or_insert_with(|| note.to_owned());
    }
}

pub(crate) struct NodeBox {
    pub x: u32,
    pub y: u32,
    pub text_x: u32,
    pub text_y: u32,
    pub label: String,
    pub full: String,
    pub fill: &'static str,
}

pub(crate) struct EdgeLine {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub stroke: &'static str,
    pub dash: &'static str,
    pub title: String,
}

pub(crate) struct EdgeRow {
    pub from: String,
    pub relation: &'static str,
    pub to: String,
    pub note: String,
}

#[derive(Template)]
#[template(path = "ui/graph.svg")]
pub(crate) struct GraphSvg {
    pub width: u32,
    pub height: u32,
    pub heading_y: u32,
    pub headings: Vec<(u32, &'static str)>,
    pub nodes: Vec<NodeBox>,
    pub edges: Vec<EdgeLine>,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/graph.html")]
struct GraphPage {
    chrome: Chrome,
    edges: Vec<EdgeRow>,
}

/// Deterministic layered layout: owners in name order; then each next column ordered by the
/// first row of the nodes pointing at it (name order among equals), which keeps most edges
/// from crossing without any search.
pub(crate) fn layout(graph: &Graph) -> GraphSvg {
    let mut places: BTreeMap<NodeKey, (u32, u32)> = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut rows = [0u32; 3];
    for column in [Column::Principals, Column::Agents, Column::Resources] {
        let index = column as usize;
        let first_parent = |key: &NodeKey| {
            let parents = graph.edges.keys().filter(|(_, _, to)| to == key);
            parents.filter_map(|(from, _, _)| places.get(from).map(|&(_, y)| y)).min().unwrap_or(u32::MAX)
        };
        let mut keys: Vec<(u32, &NodeKey)> =
            graph.nodes.iter().filter(|(c, _)| *c == column).map(|key| (first_parent(key), key)).collect();
        keys.sort();
        for (_, key) in keys {
            let (x, y) = (COLUMN_X[index], TOP + rows[index] * ROW_HEIGHT);
            rows[index] += 1;
            places.insert(key.clone(), (x, y));
            let fill = match column {
                Column::Principals => "#e8eefb",
                Column::Agents => "#eef7ee",
                Column::Resources => "#fbf3e6",
            };
            let name = &key.1;
            nodes.push(NodeBox { x, y, text_x: x + 8, text_y: y + 19, label: shorten(name), full: name.clone(), fill });
        }
    }
    let mut edges = Vec::new();
    for ((from, relation, to), note) in &graph.edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (places.get(from), places.get(to)) else { continue };
        let title = format!("{} {} {}{}", from.1, relation.label(), to.1, if note.is_empty() { "" } else { " · " });
        edges.push(EdgeLine {
            x1: x1 + NODE_WIDTH,
            y1: y1 + NODE_HEIGHT / 2,
            x2,
            y2: y2 + NODE_HEIGHT / 2,
            stroke: relation.stroke(),
            dash: relation.dash(),
            title: format!("{title}{note}"),
        });
    }
    let tallest = rows.iter().copied().max().unwrap_or(0).max(1);
    GraphSvg {
        width: COLUMN_X[2] + NODE_WIDTH + 20,
        height: TOP + tallest * ROW_HEIGHT + 10,
        heading_y: 24,
        headings: vec![(COLUMN_X[0], "Owners and principals"), (COLUMN_X[1], "Agents"), (COLUMN_X[2], "Resources")],
        nodes,
        edges,
    }
}

fn shorten(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        return label.to_owned();
    }
    let mut short: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

/// What the viewer may see of the delegation graph.
async fn build(state: &AppState, viewer: &Viewer) -> Result<Graph, OAuthError> {
    let store = &state.authz.store;
    let mut graph = Graph::default();
    let agents = visible_agents(state, viewer).await?;
    let resources = store.resources().await.map_err(store_error)?;
    let clients = store.clients().await.map_err(store_error)?;
    let owners = store.owners().await.map_err(store_error)?;
    for owner in owners.iter().filter(|o| viewer.who.sees(o.name.as_str())) {
        graph.node(Column::Principals, owner.name.as_str());
    }
    for agent in &agents {
        let owner = graph.node(Column::Principals, agent.owner.as_str());
        let node = graph.node(Column::Agents, agent.name.as_str());
        graph.edge(owner, Relation::Owns, node.clone(), "");
        for resource in &resources {
            let shared: Vec<&str> =
                agent.scopes.iter().filter(|s| resource.scopes.contains(s)).map(String::as_str).collect();
            if !shared.is_empty() {
                let to = graph.node(Column::Resources, resource.uri.as_str());
                graph.edge(node.clone(), Relation::MayUse, to, &shared.join(" "));
            }
        }
        for target in store.delegation_targets(agent.name.as_str()).await.map_err(store_error)? {
            let to = graph.node(Column::Resources, &target.resource);
            let note = format!("{} at {}", target.scopes.join(" "), target.audience);
            graph.edge(node.clone(), Relation::DelegationTarget, to, &note);
        }
    }
    let mut budget = 1_000;
    for owner in owners.iter().filter(|o| viewer.who.sees(o.name.as_str())) {
        for consent in super::owners::consents(state, owner.name.as_str(), &clients, &resources, &mut budget).await? {
            let from = graph.node(Column::Principals, owner.name.as_str());
            let to = graph.node(Column::Resources, &consent.resource);
            let note = format!("client {} · {}", consent.client_id, consent.scopes.join(" "));
            graph.edge(from, Relation::Consented, to, &note);
        }
    }
    let visible: BTreeMap<&str, &str> = agents.iter().map(|a| (a.name.as_str(), a.owner.as_str())).collect();
    for (subject, agent, resource, scope) in exchanges(state).await? {
        let Some(owner) = visible.get(agent.as_str()) else { continue };
        if !viewer.who.sees(owner) && !viewer.who.sees(&subject) {
            continue;
        }
        let principal = graph.node(Column::Principals, &subject);
        let node = graph.node(Column::Agents, &agent);
        graph.edge(principal, Relation::ActedFor, node.clone(), "token exchange");
        if !resource.is_empty() {
            let to = graph.node(Column::Resources, &resource);
            graph.edge(node, Relation::ActedAt, to, &scope);
        }
    }
    Ok(graph)
}

/// Recent delegated token exchanges: (principal, agent name, resource, scope).
async fn exchanges(state: &AppState) -> Result<Vec<(String, String, String, String)>, OAuthError> {
    let authz = &state.authz;
    let len = authz.store.audit_len().await.map_err(store_error)?;
    let params = QueryParams {
        action: Some("token.issue".into()),
        from: Some(len.saturating_sub(EXCHANGE_SCAN_EVENTS).to_string()),
        ..QueryParams::default()
    };
    let filter = params.into_filter(&authz.config.trust_domain).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let prefix = authz.config.trust_domain.agent_id_str("");
    let mut found = Vec::new();
    filter
        .scan(authz.store.as_ref(), |event| {
            let text = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
            let delegated = text("detail").starts_with("token-exchange delegation");
            let agent = text("agent").strip_prefix(&prefix).map(str::to_owned);
            if let (true, "allow", Some(agent)) = (delegated, text("decision").as_str(), agent) {
                found.push((text("subject"), agent, text("resource"), text("scope")));
            }
        })
        .await
        .map_err(|e| OAuthError::server_error(e.to_string()))?;
    Ok(found)
}

pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer) -> Response {
    let graph = match build(&state, &viewer).await {
        Ok(graph) => graph,
        Err(error) => return unavailable(&viewer, &error),
    };
    let edges = graph
        .edges
        .iter()
        .map(|((from, relation, to), note)| EdgeRow {
            from: from.1.clone(),
            relation: relation.label(),
            to: to.1.clone(),
            note: note.clone(),
        })
        .collect();
    super::page(GraphPage { chrome: viewer.chrome(), edges }.into_response())
}

pub(crate) async fn svg(State(state): State<AppState>, viewer: Viewer) -> Response {
    let graph = match build(&state, &viewer).await {
        Ok(graph) => graph,
        Err(error) => return unavailable(&viewer, &error),
    };
    match layout(&graph).render() {
        Ok(text) => {
            let mut response = text.into_response();
            let svg = HeaderValue::from_static("image/svg+xml; charset=utf-8");
            response.headers_mut().insert(header::CONTENT_TYPE, svg);
            super::page(response)
        }
        Err(e) => unavailable(&viewer, &OAuthError::server_error(format!("the graph could not be drawn: {e}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Graph {
        let mut graph = Graph::default();
        let owner = graph.node(Column::Principals, "alice");
        let agent = graph.node(Column::Agents, "<script>alert(1)</script>");
        let resource = graph.node(Column::Resources, "https://api.example/a&b");
        graph.edge(owner, Relation::Owns, agent.clone(), "");
        graph.edge(agent, Relation::MayUse, resource, "read \"quoted\"");
        graph
    }

    #[test]
    fn the_svg_escapes_every_text_and_holds_no_script() {
        let svg = layout(&sample()).render().unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("a&b") && !svg.contains("\"quoted\""), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 1 + 3, "the background and one box per node");
        assert_eq!(svg.matches("<line").count(), 2);
    }

    #[test]
    fn layout_is_deterministic_and_columned() {
        let first = layout(&sample());
        let again = layout(&sample()).render().unwrap();
        assert_eq!(first.render().unwrap(), again);
        let xs: Vec<u32> = first.nodes.iter().map(|n| n.x).collect();
        assert_eq!(xs, COLUMN_X.to_vec(), "one node per column, in column order");
        // Agents follow their owners' rows, so ownership edges do not cross.
        let mut graph = Graph::default();
        for (owner, agent) in [("alice", "zed"), ("bob", "able")] {
            let from = graph.node(Column::Principals, owner);
            let to = graph.node(Column::Agents, agent);
            graph.edge(from, Relation::Owns, to, "");
        }
        let order: Vec<String> = layout(&graph).nodes.iter().map(|n| n.full.clone()).collect();
        assert_eq!(order, ["alice", "bob", "zed", "able"]);
        let long = "x".repeat(100);
        assert_eq!(shorten(&long).chars().count(), MAX_LABEL_CHARS);
    }
}
