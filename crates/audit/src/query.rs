//! Audit queries shared by `mandate audit query` and the admin API: one parameter set, one
//! validation, one matcher. The log is scanned page by page in `seq` order (no secondary index),
//! which is linear in the log size but needs no extra state to keep consistent.

use mandate_core::TrustDomain;
use mandate_core::clock::rfc3339_ms;
use mandate_store::{Store, StoreError};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Most events one query may ask for; callers page on with `from`.
pub const MAX_LIMIT: usize = 1000;
/// Entries read per store round trip.
const PAGE: u64 = 1000;

/// Raw query parameters, as strings, exactly as the CLI flags and the admin API's query string
/// give them; [`QueryParams::into_filter`] validates them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// An agent, by name or SPIFFE ID.
    pub agent: Option<String>,
    /// An owner name: matches events whose `owner` or `subject` (the principal acted for) it is.
    pub owner: Option<String>,
    /// A token id.
    pub jti: Option<String>,
    /// An OAuth `client_id`.
    pub client: Option<String>,
    /// A transaction id (a Txn-Token's `txn`).
    pub txn: Option<String>,
    /// An action prefix, e.g. `token.` or `revoke.`.
    pub action: Option<String>,
    /// RFC 3339 time: events at or after it.
    pub since: Option<String>,
    /// RFC 3339 time: events strictly before it.
    pub until: Option<String>,
    /// At most this many events (1..=[`MAX_LIMIT`]).
    pub limit: Option<String>,
    /// Start scanning at this `seq` (to page on after a limited answer).
    pub from: Option<String>,
}

/// Why query parameters were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter {param}: {why}")]
pub struct InvalidQuery {
    /// The parameter's name.
    pub param: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit entry {0} is not valid JSON")]
    Corrupt(u64),
}

/// A validated query: every given criterion must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    agent: Option<String>,
    owner: Option<String>,
    jti: Option<String>,
    client: Option<String>,
    txn: Option<String>,
    action: Option<String>,
    /// Bounds as event `ts` strings: the log writes one fixed-width UTC format, so string order
    /// is time order.
    since: Option<String>,
    until: Option<String>,
    /// `None`: no limit (the CLI streams everything).
    limit: Option<usize>,
    from: u64,
}

/// Events that matched, in log order, and where to continue if the limit cut the answer short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    pub events: Vec<Value>,
    /// The `from` of the next page, when there may be more matches.
    pub next: Option<u64>,
}

impl QueryParams {
    /// Validates the parameters. A bare agent name becomes its SPIFFE ID in `trust_domain`.
    pub fn into_filter(self, trust_domain: &TrustDomain) -> Result<EventFilter, InvalidQuery> {
        let agent = non_empty("agent", self.agent)?
            .map(|a| if a.starts_with("spiffe://") { a } else { trust_domain.agent_id_str(&a) });
        let since = self.since.as_deref().map(|t| parse_time("since", t)).transpose()?;
        let until = self.until.as_deref().map(|t| parse_time("until", t)).transpose()?;
        if let (Some(since), Some(until)) = (&since, &until)
            && since >= until
        {
            return Err(invalid("until", "must be later than since"));
        }
        Ok(EventFilter {
            agent,
            owner: non_empty("owner", self.owner)?,
            jti: non_empty("jti", self.jti)?,
            client: non_empty("client", self.client)?,
            txn: non_empty("txn", self.txn)?,
            action: non_empty("action", self.action)?,
            since,
            until,
            limit: self.limit.as_deref().map(parse_limit).transpose()?,
            from: self
                .from
                .as_deref()
                .map(|f| f.parse().map_err(|_| invalid("from", "not a seq number")))
                .transpose()?
                .unwrap_or(0),
        })
    }
}

fn invalid(param: &'static str, why: &str) -> InvalidQuery {
    InvalidQuery { param, why: why.to_owned() }
}

fn non_empty(param: &'static str, value: Option<String>) -> Result<Option<String>, InvalidQuery> {
    match value {
        Some(v) if v.is_empty() => Err(invalid(param, "must not be empty")),
        other => Ok(other),
    }
}

/// An RFC 3339 time as the log's `ts` string (UTC, milliseconds; finer digits are dropped).
fn parse_time(param: &'static str, text: &str) -> Result<String, InvalidQuery> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid(param, "not an RFC 3339 time"))?;
    let ms =
        i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| invalid(param, "out of range"))?;
    if !(0..=253_402_300_799_999).contains(&ms) {
        return Err(invalid(param, "must be between 1970 and 9999"));
    }
    Ok(rfc3339_ms(ms))
}

fn parse_limit(text: &str) -> Result<usize, InvalidQuery> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(InvalidQuery { param: "limit", why: format!("must be an integer from 1 to {MAX_LIMIT}") }),
    }
}

impl EventFilter {
    /// The same filter, limited to `limit` events unless it has a limit already.
    pub fn with_default_limit(mut self, limit: usize) -> Self {
        self.limit = Some(self.limit.unwrap_or(limit));
        self
    }

    /// Whether one event (as logged) matches every criterion.
    pub fn matches(&self, event: &Value) -> bool {
        let field = |name: &str| event.get(name).and_then(Value::as_str);
        let equals = |name: &str, wanted: &Option<String>| wanted.as_deref().is_none_or(|w| field(name) == Some(w));
        let ts = field("ts").unwrap_or_default();
        equals("agent", &self.agent)
            && equals("jti", &self.jti)
            && equals("client", &self.client)
            && equals("txn", &self.txn)
            && self.owner.as_deref().is_none_or(|o| field("owner") == Some(o) || field("subject") == Some(o))
            && self.action.as_deref().is_none_or(|prefix| field("action").is_some_and(|a| a.starts_with(prefix)))
            && self.since.as_deref().is_none_or(|since| ts >= since)
            && self.until.as_deref().is_none_or(|until| ts < until)
    }

    /// Calls `each` with every matching event in log order, up to the limit; returns the `seq`
    /// to continue from if the limit was reached.
    pub async fn scan(&self, store: &dyn Store, mut each: impl FnMut(Value)) -> Result<Option<u64>, QueryError> {
        let mut found = 0usize;
        let mut next = self.from;
        loop {
            let page = store.audit_entries(next, next.saturating_add(PAGE)).await?;
            let Some(last) = page.last() else { return Ok(None) };
            next = last.seq + 1;
            for entry in page {
                let event: Value =
                    serde_json::from_str(&entry.canonical).map_err(|_| QueryError::Corrupt(entry.seq))?;
                if !self.matches(&event) {
                    continue;
                }
                each(event);
                found += 1;
                if self.limit.is_some_and(|limit| found >= limit) {
                    return Ok(Some(entry.seq + 1));
                }
            }
        }
    }

    /// The matching events, collected; for answers bounded by a limit (the admin API).
    pub async fn query(&self, store: &dyn Store) -> Result<QueryPage, QueryError> {
        let mut events = Vec::new();
        let next = self.scan(store, |event| events.push(event)).await?;
        Ok(QueryPage { events, next })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn domain() -> TrustDomain {
        TrustDomain::parse("mandate.local").unwrap()
    }

    fn filter(params: QueryParams) -> EventFilter {
        params.into_filter(&domain()).unwrap()
    }

    fn event() -> Value {
        json!({
            "seq": 4, "ts": "2026-11-23T09:00:00.500Z", "action": "token.issue", "agent": "spiffe://mandate.local/agent/bot",
            "owner": "alice", "subject": "bob", "client": "c1", "jti": "j1", "txn": "t1",
        })
    }

    #[test]
    fn every_criterion_must_match() {
        let matching = QueryParams {
            agent: Some("bot".into()),
            jti: Some("j1".into()),
            client: Some("c1".into()),
            txn: Some("t1".into()),
            action: Some("token.".into()),
            since: Some("2026-11-23T09:00:00.500Z".into()),
            until: Some("2026-11-23T11:00:00+01:00".into()),
            ..QueryParams::default()
        };
        assert!(filter(matching.clone()).matches(&event()));
        let misses = [
            QueryParams { agent: Some("spiffe://mandate.local/agent/other".into()), ..matching.clone() },
            QueryParams { jti: Some("j2".into()), ..matching.clone() },
            QueryParams { client: Some("c2".into()), ..matching.clone() },
            QueryParams { txn: Some("t2".into()), ..matching.clone() },
            QueryParams { action: Some("revoke.".into()), ..matching.clone() },
            QueryParams { since: Some("2026-11-23T09:00:00.501Z".into()), ..matching.clone() },
            QueryParams { until: Some("2026-11-23T09:00:00.500Z".into()), since: None, ..matching.clone() },
        ];
        for params in misses {
            assert!(!filter(params.clone()).matches(&event()), "{params:?}");
        }
    }

    #[test]
    fn owner_matches_the_owner_or_the_principal_acted_for() {
        for (owner, hit) in [("alice", true), ("bob", true), ("carol", false)] {
            let f = filter(QueryParams { owner: Some(owner.into()), ..QueryParams::default() });
            assert_eq!(f.matches(&event()), hit, "{owner}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (QueryParams { since: Some("yesterday".into()), ..QueryParams::default() }, "since"),
            (QueryParams { until: Some("2026-11-23".into()), ..QueryParams::default() }, "until"),
            (
                QueryParams {
                    since: Some("2026-11-23T10:00:00Z".into()),
                    until: Some("2026-11-23T09:00:00Z".into()),
                    ..QueryParams::default()
                },
                "until",
            ),
            (QueryParams { limit: Some("0".into()), ..QueryParams::default() }, "limit"),
            (QueryParams { limit: Some("1001".into()), ..QueryParams::default() }, "limit"),
            (QueryParams { limit: Some("ten".into()), ..QueryParams::default() }, "limit"),
            (QueryParams { from: Some("-1".into()), ..QueryParams::default() }, "from"),
            (QueryParams { agent: Some(String::new()), ..QueryParams::default() }, "agent"),
        ];
        for (params, param) in cases {
            assert_eq!(params.into_filter(&domain()).unwrap_err().param, param);
        }
    }

    #[test]
    fn time_bounds_normalise_to_the_log_format() {
        assert_eq!(parse_time("since", "2026-11-23T10:00:00.123456+01:00").unwrap(), "2026-11-23T09:00:00.123Z");
        assert!(parse_time("since", "1969-12-31T23:59:59Z").is_err());
    }
}
