//! The broker's rules file (`rules.toml`): which hosts and paths get which connection's
//! credential, which placeholder stands for it, what is denied and how often it may be used.
//! Parsed and validated once at start; matching is a pure lookup. Format: docs/broker.md.

use std::collections::HashMap;

use mandate_core::Clock;
use parking_lot::Mutex;
use serde::Deserialize;

/// Prefix of every generated placeholder; a header still holding it after substitution is an
/// unresolvable placeholder and the request is refused.
pub const PLACEHOLDER_PREFIX: &str = "MANDATE_PLACEHOLDER_";
/// Bounds on operator-written values, so a typo cannot make matching or memory unbounded.
const MAX_RULES: usize = 1024;
const MAX_NAME_BYTES: usize = 128;
const MAX_LIST_ITEMS: usize = 64;
const MIN_PLACEHOLDER_BYTES: usize = 8;
const MAX_PLACEHOLDER_BYTES: usize = 256;
const MAX_RULES_FILE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file: {0}")]
    Parse(String),
    #[error("rule {index} ({host}): {reason}")]
    Invalid { index: usize, host: String, reason: String },
}

/// What happens to hosts (and, inside an intercepted host, paths) no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// CONNECT: tunnel the bytes without interception; plain HTTP: forward untouched.
    Pass,
    /// Answer 403; nothing reaches the host.
    #[default]
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    host: String,
    #[serde(default)]
    path_prefix: Option<String>,
    connection: String,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    placeholder: Option<String>,
    #[serde(default)]
    inject: Option<InjectSpec>,
    #[serde(default)]
    deny_methods: Vec<String>,
    #[serde(default)]
    deny_paths: Vec<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    allow_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSpec {
    /// The header to set when the agent sent none (e.g. `Authorization`).
    pub header: String,
    /// Its value; `{credential}` is replaced by the credential (e.g. `Bearer {credential}`).
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per window (the bucket's capacity).
    pub requests: u32,
    /// The window in seconds over which `requests` refill.
    pub per_secs: u32,
}

/// Which hosts a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: any name below `example.com`, not `example.com` itself.
    Subdomains(String),
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, String> {
        let host = host.trim().to_ascii_lowercase();
        let (pattern, name) = match host.strip_prefix("*.") {
            Some(rest) => (Self::Subdomains(format!(".{rest}")), rest.to_owned()),
            None => (Self::Exact(host.clone()), host.clone()),
        };
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':');
        if name.is_empty() || name.len() > 253 || !name.chars().all(valid_char) || name.contains('*') {
            return Err("host must be a DNS name, an IP address or `*.` followed by a DNS name".into());
        }
        Ok(pattern)
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h.eq_ignore_ascii_case(host),
            Self::Subdomains(suffix) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub host: HostPattern,
    pub path_prefix: String,
    /// The connection used when the request names none.
    pub connection: String,
    /// Connections a `Mandate-Connection` header may choose (always includes `connection`).
    pub connections: Vec<String>,
    /// The string replaced by the chosen connection's credential in header values.
    pub placeholder: String,
    pub inject: Option<InjectSpec>,
    /// Upper-case method names refused on this rule.
    pub deny_methods: Vec<String>,
    pub deny_paths: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    /// Whether the credential may be sent to this host over plain `http://`.
    pub allow_http: bool,
    /// Position in the file, the rate limiter's key together with the connection.
    pub index: usize,
}

impl Rule {
    pub fn denies_method(&self, method: &str) -> bool {
        self.deny_methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    pub fn denies_path(&self, path: &str) -> bool {
        self.deny_paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    pub fn allows_connection(&self, connection: &str) -> bool {
        self.connections.iter().any(|c| c == connection)
    }
}

/// The whole validated rules file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub unmatched: Unmatched,
    rules: Vec<Rule>,
}

impl Rules {
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        if text.len() > MAX_RULES_FILE_BYTES {
            return Err(RulesError::Parse(format!("larger than {MAX_RULES_FILE_BYTES} bytes")));
        }
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        if file.rules.len() > MAX_RULES {
            return Err(RulesError::Parse(format!("more than {MAX_RULES} rules")));
        }
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let host = spec.host.clone();
                validate(index, spec).map_err(|reason| RulesError::Invalid { index, host, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { unmatched: file.unmatched, rules })
    }

    /// The rules naming `host`, looked up once for all the requests of a tunnel to it; when
    /// there are none, CONNECTs to the host are not intercepted.
    pub fn for_host(&self, host: &str) -> HostRules {
        HostRules(self.rules.iter().filter(|r| r.host.matches(host)).map(|r| r.index).collect())
    }

    /// The rule for a request to the host of `host`: the longest matching path prefix; on a tie,
    /// the first in the file.
    pub fn find_for(&self, host: &HostRules, path: &str) -> Option<&Rule> {
        let mut best: Option<&Rule> = None;
        let rules = host.0.iter().filter_map(|&index| self.rules.get(index));
        for rule in rules.filter(|r| path.starts_with(r.path_prefix.as_str())) {
            if best.is_none_or(|b| rule.path_prefix.len() > b.path_prefix.len()) {
                best = Some(rule);
            }
        }
        best
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// The rules naming one host (positions in the file, in file order), from [`Rules::for_host`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRules(Vec<usize>);

impl HostRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `github:work` → `MANDATE_PLACEHOLDER_GITHUB_WORK`.
pub fn default_placeholder(connection: &str) -> String {
    let snake: String =
        connection.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{PLACEHOLDER_PREFIX}{snake}")
}

fn validate(index: usize, spec: RuleSpec) -> Result<Rule, String> {
    let host = HostPattern::parse(&spec.host)?;
    let path_prefix = spec.path_prefix.unwrap_or_else(|| "/".to_owned());
    if !path_prefix.starts_with('/') {
        return Err("path_prefix must start with /".into());
    }
    check_connection_name(&spec.connection)?;
    let mut connections = spec.connections;
    if connections.len() > MAX_LIST_ITEMS {
        return Err(format!("at most {MAX_LIST_ITEMS} connections"));
    }
    for c in &connections {
        check_connection_name(c)?;
    }
    if !connections.contains(&spec.connection) {
        connections.insert(0, spec.connection.clone());
    }
    let placeholder = spec.placeholder.unwrap_or_else(|| default_placeholder(&spec.connection));
    let placeholder_ok = (MIN_PLACEHOLDER_BYTES..=MAX_PLACEHOLDER_BYTES).contains(&placeholder.len())
        && placeholder.bytes().all(|b| b.is_ascii_graphic());
    if !placeholder_ok {
        return Err(format!(
            "placeholder must be {MIN_PLACEHOLDER_BYTES}-{MAX_PLACEHOLDER_BYTES} visible ASCII characters"
        ));
    }
    if let Some(inject) = &spec.inject {
        let header_ok = http::HeaderName::from_bytes(inject.header.as_bytes()).is_ok();
        if !header_ok {
            return Err(format!("inject.header {:?} is not a header name", inject.header));
        }
        if !inject.format.contains("{credential}") {
            return Err("inject.format must contain {credential}".into());
        }
        if http::HeaderValue::from_str(&inject.format).is_err() {
            return Err("inject.format is not a valid header value".into());
        }
    }
    if spec.deny_methods.len() > MAX_LIST_ITEMS || spec.deny_paths.len() > MAX_LIST_ITEMS {
        return Err(format!("at most {MAX_LIST_ITEMS} deny_methods and deny_paths"));
    }
    let mut deny_methods = Vec::with_capacity(spec.deny_methods.len());
    for m in spec.deny_methods {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            return Err(format!("deny_methods: {m:?} is not a method"));
        }
        deny_methods.push(m.to_ascii_uppercase());
    }
    if let Some(p) = spec.deny_paths.iter().find(|p| !p.starts_with('/')) {
        return Err(format!("deny_paths: {p:?} must start with /"));
    }
    if let Some(limit) = spec.rate_limit
        && (limit.requests == 0 || limit.per_secs == 0)
    {
        return Err("rate_limit.requests and rate_limit.per_secs must be positive".into());
    }
    Ok(Rule {
        host,
        path_prefix,
        connection: spec.connection,
        connections,
        placeholder,
        inject: spec.inject,
        deny_methods,
        deny_paths: spec.deny_paths,
        rate_limit: spec.rate_limit,
        allow_http: spec.allow_http,
        index,
    })
}

fn check_connection_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.' | '@');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(valid_char) {
        return Err(format!("connection {name:?} must be 1-{MAX_NAME_BYTES} characters of [A-Za-z0-9:_.@-]"));
    }
    Ok(())
}

/// Whether a request path has `.` or `..` segments or an encoded `/` (also percent-encoded): prefix rules
/// (`path_prefix`, `deny_paths`) would see a different path than the upstream resolves, so such
/// requests are refused rather than normalised.
pub fn is_ambiguous_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let encoded_slash = (0..bytes.len()).any(|i| is_encoded(&bytes[i..], b'f'));
    encoded_slash || path.split('/').any(|segment| matches!(dots(segment.as_bytes()), Some(1 | 2)))
}

/// Whether `bytes` starts with `%2` and the hex digit `digit` (any case): `%2e` is `.`, `%2f` is `/`.
fn is_encoded(bytes: &[u8], digit: u8) -> bool {
    matches!(bytes, [b'%', b'2', d, ..] if d.eq_ignore_ascii_case(&digit))
}

/// How many dots a path segment is made of, each `.` or `%2e` (any case); `None` if anything else.
fn dots(mut segment: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !segment.is_empty() {
        if segment[0] == b'.' {
            segment = &segment[1..];
        } else if is_encoded(segment, b'e') {
            segment = &segment[3..];
        } else {
            return None;
        }
        count += 1;
    }
    Some(count)
}

/// Token buckets per (rule, connection), refilled continuously from the injected clock.
pub struct RateLimiter {
    buckets: Mutex<HashMap<(usize, String), Bucket>>,
}

struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self { buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for this rule's connection; false when the bucket is empty. The map's
    /// keys are rule positions and connection names the rule allows, so it is bounded by the
    /// rules file.
    pub fn try_acquire(&self, rule: &Rule, connection: &str, clock: &dyn Clock) -> bool {
        let Some(limit) = rule.rate_limit else { return true };
        let now = clock.now_ms();
        let capacity = f64::from(limit.requests);
        let refill_per_ms = capacity / (f64::from(limit.per_secs) * 1000.0);
        let mut buckets = self.buckets.lock();
        let bucket =
            buckets.entry((rule.index, connection.to_owned())).or_insert(Bucket { tokens: capacity, last_ms: now });
        // A clock stepping backwards refills nothing rather than going negative.
        let elapsed = (now - bucket.last_ms).max(0);
        #[allow(clippy::cast_precision_loss)] // milliseconds well below 2^52
        let refill = elapsed as f64 * refill_per_ms;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.last_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mandate_core::ManualClock;

    use super::*;

    /// The connection of the rule a request to `host` and `path` goes by.
    fn connection<'a>(rules: &'a Rules, host: &str, path: &str) -> Option<&'a str> {
        rules.find_for(&rules.for_host(host), path).map(|r| r.connection.as_str())
    }

    fn one(rule: &str) -> Result<Rules, RulesError> {
        Rules::parse(&format!("[[rule]]\n{rule}"))
    }

    #[test]
    fn parses_a_full_rule_and_defaults() {
        let rules = Rules::parse(
            r#"
            unmatched = "pass"
            [[rule]]
            host = "*.Example.com"
            path_prefix = "/api"
            connection = "github:work"
            connections = ["github:personal"]
            inject = { header = "Authorization", format = "Bearer {credential}" }
            deny_methods = ["delete"]
            deny_paths = ["/api/admin"]
            rate_limit = { requests = 2, per_secs = 60 }
            "#,
        )
        .unwrap();
        assert_eq!(rules.unmatched, Unmatched::Pass);
        let rule = &rules.rules()[0];
        assert_eq!(rule.placeholder, "MANDATE_PLACEHOLDER_GITHUB_WORK");
        assert_eq!(rule.connections, ["github:work", "github:personal"]);
        assert!(rule.denies_method("DELETE"));
        assert!(!rule.denies_method("GET"));
        assert!(rule.denies_path("/api/admin/users"));
        assert!(!rule.denies_path("/api/user"));
        assert_eq!(Rules::parse("").unwrap().unmatched, Unmatched::Refuse);
    }

    #[test]
    fn host_patterns_match_exactly_or_below_the_wildcard() {
        let rules = Rules::parse(
            "[[rule]]\nhost = \"*.example.com\"\nconnection = \"a\"\n[[rule]]\nhost = \"api.github.com\"\nconnection = \"b\"",
        )
        .unwrap();
        let covered = |host: &str| !rules.for_host(host).is_empty();
        assert!(covered("a.example.com"));
        assert!(covered("A.B.Example.COM"));
        assert!(!covered("example.com"));
        assert!(!covered("badexample.com"));
        assert!(covered("API.github.com"));
        assert!(!covered("api.github.com.evil"));
    }

    #[test]
    fn the_longest_path_prefix_wins() {
        let rules = Rules::parse(
            "[[rule]]\nhost = \"h.test\"\nconnection = \"root\"\n\
             [[rule]]\nhost = \"h.test\"\npath_prefix = \"/v2\"\nconnection = \"v2\"",
        )
        .unwrap();
        assert_eq!(connection(&rules, "h.test", "/v2/x"), Some("v2"));
        assert_eq!(connection(&rules, "h.test", "/v1"), Some("root"));
        // One host's rules, looked up once, answer every path.
        let host = rules.for_host("h.test");
        assert_eq!(rules.find_for(&host, "/v2/x").map(|r| r.connection.as_str()), Some("v2"));
        assert_eq!(rules.find_for(&host, "/v1").map(|r| r.connection.as_str()), Some("root"));
        assert!(rules.for_host("other.test").is_empty());
        assert!(connection(&rules, "other.test", "/").is_none());
    }

    #[test]
    fn ties_go_to_the_first_rule_and_wildcards_join_exact_hosts() {
        let rules = Rules::parse(
            "[[rule]]\nhost = \"*.example.com\"\nconnection = \"wild\"\n\
             [[rule]]\nhost = \"api.example.com\"\nconnection = \"exact\"\n\
             [[rule]]\nhost = \"api.example.com\"\npath_prefix = \"/v1\"\nconnection = \"v1\"",
        )
        .unwrap();
        for host in ["api.example.com", "API.Example.Com"] {
            assert_eq!(connection(&rules, host, "/x"), Some("wild"));
            assert_eq!(connection(&rules, host, "/v1/x"), Some("v1"));
        }
        assert_eq!(connection(&rules, "other.example.com", "/v1"), Some("wild"));
    }

    #[test]
    fn invalid_rules_are_refused() {
        let bad = [
            "host = \"\"\nconnection = \"a\"",
            "host = \"a b\"\nconnection = \"a\"",
            "host = \"*.*.x\"\nconnection = \"a\"",
            "host = \"h\"\nconnection = \"\"",
            "host = \"h\"\nconnection = \"has space\"",
            "host = \"h\"\nconnection = \"a\"\nconnections = [\"bad name\"]",
            "host = \"h\"\nconnection = \"a\"\npath_prefix = \"api\"",
            "host = \"h\"\nconnection = \"a\"\nplaceholder = \"short\"",
            "host = \"h\"\nconnection = \"a\"\nplaceholder = \"has a space in it\"",
            "host = \"h\"\nconnection = \"a\"\ninject = { header = \"Bad Header\", format = \"{credential}\" }",
            "host = \"h\"\nconnection = \"a\"\ninject = { header = \"Authorization\", format = \"Bearer\" }",
            "host = \"h\"\nconnection = \"a\"\ndeny_methods = [\"G T\"]",
            "host = \"h\"\nconnection = \"a\"\ndeny_paths = [\"admin\"]",
            "host = \"h\"\nconnection = \"a\"\nrate_limit = { requests = 0, per_secs = 1 }",
            "host = \"h\"\nconnection = \"a\"\nrate_limit = { requests = 1, per_secs = 0 }",
            "host = \"h\"\nconnection = \"a\"\nunknown_field = 1",
        ];
        for rule in bad {
            assert!(one(rule).is_err(), "accepted: {rule}");
        }
        assert!(Rules::parse("unmatched = \"maybe\"").is_err());
        assert!(Rules::parse(&"#".repeat(MAX_RULES_FILE_BYTES + 1)).is_err());
    }

    #[test]
    fn ambiguous_paths_are_detected() {
        for path in ["/a/../b", "/..", "/a/./b", "/a/%2e%2E/b", "/a/%2E/b", "/a%2fb"] {
            assert!(is_ambiguous_path(path), "{path}");
        }
        for path in ["/a/%2E%2e", "/a/.%2e/b", "/%2F", "/a/b%2f"] {
            assert!(is_ambiguous_path(path), "{path}");
        }
        for path in ["/", "/a/b", "/a/..b/c", "/.well-known/x", "/a/.../b", "/a/%2e%2e%2e", "/%2", "/%2x", "/a%25"] {
            assert!(!is_ambiguous_path(path), "{path}");
        }
    }

    #[test]
    fn the_rate_limiter_refills_over_time_per_connection() {
        let rules = one(
            "host = \"h\"\nconnection = \"a\"\nconnections = [\"b\"]\nrate_limit = { requests = 2, per_secs = 10 }",
        )
        .unwrap();
        let rule = &rules.rules()[0];
        let clock = ManualClock::at_ms(1_000_000);
        let limiter = RateLimiter::new();
        assert!(limiter.try_acquire(rule, "a", &clock));
        assert!(limiter.try_acquire(rule, "a", &clock));
        assert!(!limiter.try_acquire(rule, "a", &clock));
        // Another connection has its own bucket.
        assert!(limiter.try_acquire(rule, "b", &clock));
        clock.advance_ms(5_000);
        assert!(limiter.try_acquire(rule, "a", &clock));
        assert!(!limiter.try_acquire(rule, "a", &clock));
    }
}
