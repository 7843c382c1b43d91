//! Content checks on the request bodies the gateway forwards: built-in detectors for secrets
//! (known key formats, high-entropy tokens) and configurable PII patterns, run over every JSON
//! string (keys included) or over text. Pure: a finding names its kind, where it is and how long
//! it is, never the matched text; redaction rewrites the body and keeps it valid JSON.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;

/// What happens to a request whose body holds a finding of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentAction {
    /// Refuse the whole request.
    Deny,
    /// Replace the matched text with `[REDACTED:<kind>]` and forward.
    Redact,
    /// Forward unchanged (the finding is still audited).
    Allow,
}

impl ContentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Redact => "redact",
            Self::Allow => "allow",
        }
    }
}

/// Whether a detector looks for credentials or for personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Secret,
    Pii,
}

/// `[content]` of the governance file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// Per-kind action overrides, e.g. `email = "allow"`, `high_entropy = "redact"`.
    #[serde(default)]
    pub actions: BTreeMap<String, ContentAction>,
    /// Extra PII patterns (`[[content.pii]]`).
    #[serde(default)]
    pub pii: Vec<PiiPattern>,
    #[serde(default)]
    pub entropy: EntropyConfig,
    /// What to do with a body that cannot be scanned (another content type, a compressed or
    /// non-UTF-8 body): forward it (`allow`, the default) or refuse it (`deny`).
    #[serde(default = "unscanned_default")]
    pub unscanned: ContentAction,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            actions: BTreeMap::new(),
            pii: Vec::new(),
            entropy: EntropyConfig::default(),
            unscanned: unscanned_default(),
        }
    }
}

fn unscanned_default() -> ContentAction {
    ContentAction::Allow
}

/// A configured PII pattern: a name (the finding's kind), a regular expression and an action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiPattern {
    pub name: String,
    pub pattern: String,
    #[serde(default = "redact")]
    pub action: ContentAction,
}

fn redact() -> ContentAction {
    ContentAction::Redact
}

/// `[content.entropy]`: the high-entropy token detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Shortest run of base64/hex-alphabet characters considered (at least 16).
    #[serde(default = "min_length_default")]
    pub min_length: usize,
    /// Shannon entropy, in bits per character, a mixed-case run must reach.
    #[serde(default = "threshold_default")]
    pub threshold: f64,
}

impl Default for EntropyConfig {
    fn default() -> Self {
        Self { enabled: true, min_length: min_length_default(), threshold: threshold_default() }
    }
}

fn yes() -> bool {
    true
}
fn min_length_default() -> usize {
    20
}
fn threshold_default() -> f64 {
    3.5
}

#[derive(Debug, thiserror::Error)]
pub enum ContentConfigError {
    #[error("content.pii name {0:?} must be 1-64 characters of a-z, 0-9 and _, and not a built-in kind")]
    Name(String),
    #[error("content.pii {name:?}: the pattern does not compile: {error}")]
    Pattern { name: String, error: String },
    #[error("content.actions names unknown kind {0:?}")]
    UnknownKind(String),
    #[error("content.entropy: min_length must be 16..=4096 and threshold 1.0..=6.0")]
    Entropy,
    #[error("a built-in content pattern does not compile: {0}")]
    Builtin(String),
}

/// Longest text the scanner reports findings for individually; more are counted only.
const MAX_REPORTED: usize = 64;
/// Bound on a JSON pointer segment in a finding's location (keys come from the caller).
const MAX_SEGMENT: usize = 64;
/// Size limit for compiled configured patterns (the regex crate's own guard).
const MAX_PATTERN_SIZE: usize = 1 << 20;
/// Kind of the high-entropy detector.
pub const HIGH_ENTROPY: &str = "high_entropy";

/// One built-in or configured pattern.
struct Detector {
    kind: String,
    category: Category,
    regex: Regex,
    /// A check the match must also pass (the Luhn checksum of card numbers).
    validate: Option<Validator>,
    action: ContentAction,
}

/// Built-in secret formats: (kind, pattern). Ordered: earlier detectors win overlapping matches.
const SECRET_PATTERNS: &[(&str, &str)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END [A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,250}"),
    ("stripe_key", r"\b(?:sk|rk)_live_[A-Za-z0-9]{16,247}\b"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("openai_api_key", r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"),
];

/// A check a pattern's match must also pass.
type Validator = fn(&str) -> bool;

/// Built-in PII patterns, redacted by default.
const PII_PATTERNS: &[(&str, &str, Option<Validator>)] = &[
    ("email", r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b", None),
    ("credit_card", r"\b(?:\d[ -]?){12,18}\d\b", Some(luhn_card)),
];

/// Where a finding is and what it is; never the matched text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: String,
    pub category: Category,
    /// A JSON pointer (`/params/arguments/note`), `/form/<n>/value`, or `text`.
    pub location: String,
    /// Length of the match in bytes.
    pub length: usize,
    pub action: ContentAction,
}

impl Finding {
    /// `kind@location(len=N,action)`: the form findings take in audit details and errors.
    pub fn describe(&self) -> String {
        format!("{}@{}(len={},{})", self.kind, self.location, self.length, self.action.as_str())
    }
}

/// The findings of one body.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// The first [`MAX_REPORTED`] findings.
    pub findings: Vec<Finding>,
    /// All findings, reported or not.
    pub total: usize,
    /// The first finding whose action is `deny`, if any.
    pub denied: Option<Finding>,
    /// Whether the body was changed.
    pub redacted: bool,
}

impl Scan {
    fn push(&mut self, finding: Finding) {
        self.total += 1;
        if finding.action == ContentAction::Deny && self.denied.is_none() {
            self.denied = Some(finding.clone());
        }
        if self.findings.len() < MAX_REPORTED {
            self.findings.push(finding);
        }
    }

    /// The kinds found, deduplicated, in order of first appearance.
    pub fn kinds(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.findings.iter().filter(|f| seen.insert(f.kind.as_str())).map(|f| f.kind.clone()).collect()
    }

    /// The findings for an audit detail: `findings=kind@loc(len=N,action),...`, bounded.
    pub fn summary(&self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let listed: Vec<String> = self.findings.iter().take(16).map(Finding::describe).collect();
        let mut summary = format!("findings={}", listed.join(","));
        if self.total > listed.len() {
            summary.push_str(&format!(" (+{} more)", self.total - listed.len()));
        }
        Some(summary)
    }
}

/// A match inside one string, before it becomes a [`Finding`].
struct Hit {
    range: Range<usize>,
    detector: usize,
}

/// The compiled detectors of a `[content]` configuration.
pub struct Scanner {
    detectors: Vec<Detector>,
    entropy: Option<(Regex, EntropyConfig, ContentAction)>,
}

impl Scanner {
    pub fn new(config: &ContentConfig) -> Result<Self, ContentConfigError> {
        let mut builtin: HashSet<&str> = SECRET_PATTERNS.iter().map(|(k, _)| *k).collect();
        builtin.extend(PII_PATTERNS.iter().map(|(k, _, _)| *k));
        builtin.insert(HIGH_ENTROPY);
        let custom: HashSet<&str> = config.pii.iter().map(|p| p.name.as_str()).collect();
        if let Some(unknown) =
            config.actions.keys().find(|k| !builtin.contains(k.as_str()) && !custom.contains(k.as_str()))
        {
            return Err(ContentConfigError::UnknownKind(unknown.clone()));
        }
        let action = |kind: &str, default: ContentAction| config.actions.get(kind).copied().unwrap_or(default);
        let mut detectors = Vec::new();
        for (kind, pattern) in SECRET_PATTERNS {
            detectors.push(Detector {
                kind: (*kind).to_owned(),
                category: Category::Secret,
                regex: builtin_regex(pattern)?,
                validate: None,
                action: action(kind, ContentAction::Deny),
            });
        }
        for (kind, pattern, validate) in PII_PATTERNS {
            detectors.push(Detector {
                kind: (*kind).to_owned(),
                category: Category::Pii,
                regex: builtin_regex(pattern)?,
                validate: *validate,
                action: action(kind, ContentAction::Redact),
            });
        }
        let mut names = HashSet::new();
        for pii in &config.pii {
            let valid_name = !pii.name.is_empty()
                && pii.name.len() <= 64
                && pii.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name || builtin.contains(pii.name.as_str()) || !names.insert(pii.name.as_str()) {
                return Err(ContentConfigError::Name(pii.name.clone()));
            }
            let regex = RegexBuilder::new(&pii.pattern)
                .size_limit(MAX_PATTERN_SIZE)
                .build()
                .map_err(|e| ContentConfigError::Pattern { name: pii.name.clone(), error: e.to_string() })?;
            detectors.push(Detector {
                kind: pii.name.clone(),
                category: Category::Pii,
                regex,
                validate: None,
                action: action(&pii.name, pii.action),
            });
        }
        let e = &config.entropy;
        if !(16..=4096).contains(&e.min_length) || !(1.0..=6.0).contains(&e.threshold) {
            return Err(ContentConfigError::Entropy);
        }
        let entropy = match e.enabled {
            // `=` only as trailing padding, so `key=<token>` reports the token alone.
            true => Some((
                builtin_regex(&format!("[A-Za-z0-9+/_-]{{{},}}={{0,2}}", e.min_length))?,
                e.clone(),
                action(HIGH_ENTROPY, ContentAction::Deny),
            )),
            false => None,
        };
        Ok(Self { detectors, entropy })
    }

    /// Scans every string of `value` (object keys included) and redacts in place.
    pub fn scan_json(&self, value: &mut Value) -> Scan {
        let mut scan = Scan::default();
        let mut pointer = String::new();
        self.walk(value, &mut pointer, &mut scan);
        scan
    }

    fn walk(&self, value: &mut Value, pointer: &mut String, scan: &mut Scan) {
        match value {
            Value::String(text) => {
                if let Some(redacted) = self.scan_str(text, pointer_or_root(pointer), scan) {
                    *text = redacted;
                    scan.redacted = true;
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter_mut().enumerate() {
                    let mark = pointer.len();
                    pointer.push_str(&format!("/{index}"));
                    self.walk(item, pointer, scan);
                    pointer.truncate(mark);
                }
            }
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    let mark = pointer.len();
                    // A key cannot be rewritten in place: what would be redacted in a key is refused.
                    let mut key_scan = Scan::default();
                    let key_hit = self.scan_str(key, &format!("{pointer}/*"), &mut key_scan).is_some();
                    let key_found = key_scan.total > 0;
                    for mut finding in key_scan.findings {
                        if key_hit && finding.action == ContentAction::Redact {
                            finding.action = ContentAction::Deny;
                        }
                        scan.push(finding);
                    }
                    // Locations never spell out a key that is itself a finding.
                    pointer.push('/');
                    if key_found {
                        pointer.push('*')
                    } else {
                        pointer.push_str(&pointer_segment(key))
                    }
                    self.walk(child, pointer, scan);
                    pointer.truncate(mark);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Scans plain text; returns the text to forward (redacted when needed).
    pub fn scan_text(&self, text: &str) -> (Option<String>, Scan) {
        let mut scan = Scan::default();
        let redacted = self.scan_str(text, "text", &mut scan);
        scan.redacted = redacted.is_some();
        (redacted, scan)
    }

    /// Scans an `application/x-www-form-urlencoded` body's decoded names and values; returns
    /// the re-encoded body when something was redacted.
    pub fn scan_form(&self, body: &str) -> (Option<String>, Scan) {
        let mut scan = Scan::default();
        let mut pairs = Vec::new();
        let mut changed = false;
        for (index, (name, value)) in url::form_urlencoded::parse(body.as_bytes()).enumerate() {
            let name = match self.scan_str(&name, &format!("/form/{index}/name"), &mut scan) {
                Some(redacted) => {
                    changed = true;
                    redacted
                }
                None => name.into_owned(),
            };
            let value = match self.scan_str(&value, &format!("/form/{index}/value"), &mut scan) {
                Some(redacted) => {
                    changed = true;
                    redacted
                }
                None => value.into_owned(),
            };
            pairs.push((name, value));
        }
        scan.redacted = changed;
        let encoded =
            changed.then(|| url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish());
        (encoded, scan)
    }

    /// Records the findings in `text` at `location`; `Some(new text)` when something is redacted.
    fn scan_str(&self, text: &str, location: &str, scan: &mut Scan) -> Option<String> {
        let hits = self.hits(text);
        let mut redacted = String::new();
        let mut copied = 0;
        let mut changed = false;
        for hit in &hits {
            let (kind, category, action) = match self.detectors.get(hit.detector) {
                Some(d) => (d.kind.as_str(), d.category, d.action),
                None => match &self.entropy {
                    Some((_, _, action)) => (HIGH_ENTROPY, Category::Secret, *action),
                    None => continue,
                },
            };
            scan.push(Finding {
                kind: kind.to_owned(),
                category,
                location: location.to_owned(),
                length: hit.range.len(),
                action,
            });
            if action == ContentAction::Redact {
                redacted.push_str(&text[copied..hit.range.start]);
                redacted.push_str(&format!("[REDACTED:{kind}]"));
                copied = hit.range.end;
                changed = true;
            }
        }
        changed.then(|| {
            redacted.push_str(&text[copied..]);
            redacted
        })
    }

    /// Non-overlapping matches in `text`, ordered by position. Detectors are tried in order
    /// (secrets, PII, then entropy); a match overlapping an earlier detector's is dropped.
    fn hits(&self, text: &str) -> Vec<Hit> {
        // start -> (end, detector)
        let mut taken: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        let overlaps = |taken: &BTreeMap<usize, (usize, usize)>, range: &Range<usize>| {
            let before = taken.range(..range.end).next_back();
            before.is_some_and(|(_, (end, _))| *end > range.start)
        };
        for (index, detector) in self.detectors.iter().enumerate() {
            for found in detector.regex.find_iter(text) {
                let range = found.range();
                if range.is_empty() || detector.validate.is_some_and(|valid| !valid(found.as_str())) {
                    continue;
                }
                if !overlaps(&taken, &range) {
                    taken.insert(range.start, (range.end, index));
                }
            }
        }
        if let Some((runs, config, _)) = &self.entropy {
            for found in runs.find_iter(text) {
                let range = found.range();
                if is_high_entropy(found.as_str(), config) && !overlaps(&taken, &range) {
                    taken.insert(range.start, (range.end, self.detectors.len()));
                }
            }
        }
        taken.into_iter().map(|(start, (end, detector))| Hit { range: start..end, detector }).collect()
    }
}

/// Built-in patterns are constants checked by the unit tests; one failing to compile is a bug,
/// reported as a configuration error rather than a panic.
fn builtin_regex(pattern: &str) -> Result<Regex, ContentConfigError> {
    Regex::new(pattern).map_err(|e| ContentConfigError::Builtin(e.to_string()))
}

fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

/// One RFC 6901 segment, escaped and bounded.
fn pointer_segment(key: &str) -> String {
    let escaped = key.replace('~', "~0").replace('/', "~1");
    if escaped.chars().count() <= MAX_SEGMENT {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(MAX_SEGMENT).collect();
    cut.push('…');
    cut
}

/// Shannon entropy of `text`, in bits per character.
pub fn shannon_entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut total = 0u32;
    for byte in text.bytes() {
        counts[usize::from(byte)] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let total = f64::from(total);
    counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / total).map(|p| -p * p.log2()).sum()
}

/// Whether a run of base64/hex-alphabet characters looks like a random token.
///
/// Hex runs (one case) need 32 characters, letters and digits, and 3.0 bits per character. Other
/// runs need upper case, lower case and digits, the configured entropy, and frequent switches
/// between those classes: random strings switch on most characters, identifiers made of words
/// (`getUserById2Settings`) mostly do not. UUIDs and words never qualify.
fn is_high_entropy(run: &str, config: &EntropyConfig) -> bool {
    let run = run.trim_end_matches('=');
    if run.len() < config.min_length || is_uuid(run) {
        return false;
    }
    let bytes = run.as_bytes();
    let has_digit = bytes.iter().any(u8::is_ascii_digit);
    let hex_lower = bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let hex_upper = bytes.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    if hex_lower || hex_upper {
        let has_letter = bytes.iter().any(u8::is_ascii_alphabetic);
        return run.len() >= config.min_length.max(32) && has_digit && has_letter && shannon_entropy(run) >= 3.0;
    }
    let has_upper = bytes.iter().any(u8::is_ascii_uppercase);
    let has_lower = bytes.iter().any(u8::is_ascii_lowercase);
    if !(has_digit && has_upper && has_lower) {
        return false;
    }
    class_switch_ratio(bytes) >= 0.35 && shannon_entropy(run) >= config.threshold
}

/// Share of adjacent character pairs whose classes (upper, lower, digit, other) differ.
fn class_switch_ratio(bytes: &[u8]) -> f64 {
    let class = |b: &u8| match b {
        b'A'..=b'Z' => 0,
        b'a'..=b'z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let pairs = bytes.len().saturating_sub(1);
    if pairs == 0 {
        return 0.0;
    }
    let switches = bytes.windows(2).filter(|w| class(&w[0]) != class(&w[1])).count();
    switches as f64 / pairs as f64
}

fn is_uuid(run: &str) -> bool {
    let groups: Vec<&str> = run.split('-').collect();
    groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A card number: 13 to 19 digits (spaces and dashes ignored) passing the Luhn checksum.
pub fn luhn_card(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { *d })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    fn scanner() -> Scanner {
        Scanner::new(&ContentConfig::default()).unwrap()
    }

    fn kinds_in(text: &str) -> Vec<String> {
        let (_, scan) = scanner().scan_text(text);
        scan.findings.into_iter().map(|f| f.kind).collect()
    }

    fn random_b64(bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        mandate_crypto::secret::fill_random(&mut buf);
        URL_SAFE_NO_PAD.encode(buf)
    }

    #[test]
    fn builtin_patterns_compile() {
        for (kind, pattern) in SECRET_PATTERNS {
            assert!(Regex::new(pattern).is_ok(), "{kind}");
        }
        for (kind, pattern, _) in PII_PATTERNS {
            assert!(Regex::new(pattern).is_ok(), "{kind}");
        }
    }

    #[test]
    fn known_secret_formats_are_found() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE here", "aws_access_key_id"),
            ("ASIAY34FZKBOKMUTVV7A", "aws_access_key_id"),
            ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "github_token"),
            ("gho_0123456789abcdefghijABCDEFGHIJ012345", "github_token"),
            ("token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_token"),
            ("xoxb-1234567890-abcdefghij", "slack_token"),
            ("xoxp-1234567890-1234567890-abcdef", "slack_token"),
            ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
            ("rk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_key"),
            ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "google_api_key"),
            (pem, "private_key"),
            ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI", "private_key"),
            (
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "jwt",
            ),
            ("sk-proj-abcdefghijklmnopqrstuvwx0123", "openai_api_key"),
            ("sk-abcdefghijklmnopqrstuvwxyz012345", "openai_api_key"),
        ];
        for (text, kind) in cases {
            assert_eq!(kinds_in(text), [kind], "{text}");
        }
    }

    #[test]
    fn lookalikes_of_secret_formats_are_not_flagged() {
        for text in [
            "AKIA is a prefix",
            "AKIAIOSFODNN7EXAMPL", // 15 characters after the prefix
            "ghp_short",
            "xoxz-1234567890-abcdefghij", // not a Slack token type
            "eyJhbGci.eyJzdWIi.x is too short for a JWT",
            "-----BEGIN PUBLIC KEY-----",
            "the task-list for sk-1 is short",
        ] {
            assert!(kinds_in(text).is_empty(), "{text}: {:?}", kinds_in(text));
        }
    }

    #[test]
    fn random_tokens_have_high_entropy() {
        let config = EntropyConfig::default();
        let mut found = 0;
        for _ in 0..200 {
            let token = random_b64(30); // 40 characters
            if is_high_entropy(&token, &config) {
                found += 1;
            }
        }
        // A random 40-character token lacks a digit or a case ~1% of the time; allow a few.
        assert!(found >= 190, "{found} of 200");
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(is_high_entropy(hex, &config));
        assert_eq!(kinds_in(&format!("secret={}", "Zx8Qp2Lm7Vt4Rk9Wd3Hs6Jb1Nf5Gy0Ce")), [HIGH_ENTROPY]);
    }

    #[test]
    fn ordinary_text_uuids_and_identifiers_are_not_high_entropy() {
        let config = EntropyConfig::default();
        for text in [
            "550e8400-e29b-41d4-a716-446655440000",
            "internationalization",
            "customer_invoice_2024_final_v2",
            "myVariableName1234567",
            "HelloWorldHelloWorld1",
            "AbstractSingletonProxyFactoryBean",
            "/v1/users/12345/orders/67890/items",
            "12345678901234567890123",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "ORDER_2024_11_23_000123",
            "deadbeefdeadbeefdeadbeef", // hex, but shorter than 32
        ] {
            assert!(!is_high_entropy(text, &config), "{text}");
        }
        let sentence = "Please summarise the quarterly report for customer 550e8400-e29b-41d4-a716-446655440000.";
        assert!(kinds_in(sentence).is_empty());
    }

    #[test]
    fn entropy_is_measured_in_bits_per_character() {
        assert_eq!(shannon_entropy(""), 0.0);
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-9);
        assert!((shannon_entropy("0123456789abcdef") - 4.0).abs() < 1e-9);
    }

    #[test]
    fn luhn_accepts_valid_card_numbers_only() {
        for valid in ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"] {
            assert!(luhn_card(valid), "{valid}");
        }
        for invalid in ["4111111111111112", "1234567890123", "0000000000000000", "411111111111"] {
            assert!(!luhn_card(invalid), "{invalid}");
        }
        assert_eq!(kinds_in("card 4111 1111 1111 1111 exp 12/29"), ["credit_card"]);
        assert!(kinds_in("order 4111111111111112").is_empty(), "fails the checksum");
    }

    #[test]
    fn emails_are_found_and_redacted_by_default() {
        let (redacted, scan) = scanner().scan_text("write to alice@example.com today");
        assert_eq!(redacted.as_deref(), Some("write to [REDACTED:email] today"));
        assert_eq!(scan.findings[0].action, ContentAction::Redact);
        assert_eq!(scan.findings[0].length, "alice@example.com".len());
        assert!(kinds_in("not an email: alice@ or @example.com").is_empty());
    }

    #[test]
    fn redaction_keeps_json_valid_and_reports_pointers() {
        let mut body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "mail",
            "arguments": {"to": "bob@example.org", "cc": ["x \"quoted\" carol@example.net"], "n": 3}}});
        let scan = scanner().scan_json(&mut body);
        assert!(scan.redacted && scan.denied.is_none());
        let text = serde_json::to_string(&body).unwrap();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed["params"]["arguments"]["to"], "[REDACTED:email]");
        assert_eq!(reparsed["params"]["arguments"]["cc"][0], "x \"quoted\" [REDACTED:email]");
        assert_eq!(reparsed["params"]["arguments"]["n"], 3);
        let mut locations: Vec<&str> = scan.findings.iter().map(|f| f.location.as_str()).collect();
        locations.sort_unstable();
        assert_eq!(locations, ["/params/arguments/cc/0", "/params/arguments/to"]);
        assert!(!text.contains("example.org") && !text.contains("example.net"));
    }

    #[test]
    fn secrets_deny_and_findings_never_carry_the_text() {
        let mut body = json!({"params": {"arguments": {"key": "AKIAIOSFODNN7EXAMPLE", "mail": "a@b.example"}}});
        let scan = scanner().scan_json(&mut body);
        let denied = scan.denied.clone().unwrap();
        assert_eq!((denied.kind.as_str(), denied.location.as_str()), ("aws_access_key_id", "/params/arguments/key"));
        assert_eq!(denied.length, 20);
        let described = format!("{:?} {}", scan.findings, scan.summary().unwrap());
        assert!(!described.contains("AKIAIOSFODNN7EXAMPLE") && !described.contains("a@b.example"), "{described}");
    }

    #[test]
    fn a_finding_in_a_key_is_refused_and_not_spelled_out() {
        let mut body = json!({"AKIAIOSFODNN7EXAMPLE": 1, "bob@example.org": {"x": "y"}});
        let scan = scanner().scan_json(&mut body);
        assert!(scan.findings.iter().all(|f| f.location == "/*"), "{:?}", scan.findings);
        assert_eq!(scan.denied.as_ref().map(|f| f.kind.as_str()), Some("aws_access_key_id"));
        // An email in a key cannot be redacted in place, so it is refused too.
        assert!(scan.findings.iter().any(|f| f.kind == "email" && f.action == ContentAction::Deny));
    }

    #[test]
    fn actions_and_custom_patterns_are_configurable() {
        let config = ContentConfig {
            actions: BTreeMap::from([
                ("email".to_owned(), ContentAction::Allow),
                ("aws_access_key_id".to_owned(), ContentAction::Redact),
            ]),
            pii: vec![PiiPattern {
                name: "employee_id".into(),
                pattern: r"\bEMP-\d{6}\b".into(),
                action: ContentAction::Deny,
            }],
            ..ContentConfig::default()
        };
        let scanner = Scanner::new(&config).unwrap();
        let (redacted, scan) = scanner.scan_text("alice@example.com AKIAIOSFODNN7EXAMPLE EMP-123456");
        assert_eq!(redacted.as_deref(), Some("alice@example.com [REDACTED:aws_access_key_id] EMP-123456"));
        let actions: Vec<(&str, ContentAction)> = scan.findings.iter().map(|f| (f.kind.as_str(), f.action)).collect();
        assert_eq!(
            actions,
            [
                ("email", ContentAction::Allow),
                ("aws_access_key_id", ContentAction::Redact),
                ("employee_id", ContentAction::Deny)
            ]
        );
        assert_eq!(scan.denied.map(|f| f.kind), Some("employee_id".to_owned()));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad_name = ContentConfig {
            pii: vec![PiiPattern { name: "Bad Name".into(), pattern: "x".into(), action: ContentAction::Deny }],
            ..ContentConfig::default()
        };
        assert!(matches!(Scanner::new(&bad_name), Err(ContentConfigError::Name(_))));
        let shadowing = ContentConfig {
            pii: vec![PiiPattern { name: "email".into(), pattern: "x".into(), action: ContentAction::Deny }],
            ..ContentConfig::default()
        };
        assert!(matches!(Scanner::new(&shadowing), Err(ContentConfigError::Name(_))));
        let bad_regex = ContentConfig {
            pii: vec![PiiPattern { name: "broken".into(), pattern: "(".into(), action: ContentAction::Deny }],
            ..ContentConfig::default()
        };
        assert!(matches!(Scanner::new(&bad_regex), Err(ContentConfigError::Pattern { .. })));
        let unknown = ContentConfig {
            actions: BTreeMap::from([("nope".to_owned(), ContentAction::Allow)]),
            ..ContentConfig::default()
        };
        assert!(matches!(Scanner::new(&unknown), Err(ContentConfigError::UnknownKind(_))));
        let entropy = ContentConfig {
            entropy: EntropyConfig { min_length: 4, ..EntropyConfig::default() },
            ..ContentConfig::default()
        };
        assert!(matches!(Scanner::new(&entropy), Err(ContentConfigError::Entropy)));
        let longest = ContentConfig {
            entropy: EntropyConfig { min_length: 4096, ..EntropyConfig::default() },
            ..ContentConfig::default()
        };
        assert!(Scanner::new(&longest).is_ok(), "the largest min_length compiles");
    }

    #[test]
    fn form_bodies_are_scanned_decoded_and_re_encoded() {
        let (redacted, scan) = scanner().scan_form("to=alice%40example.com&note=hi+there");
        assert_eq!(redacted.as_deref(), Some("to=%5BREDACTED%3Aemail%5D&note=hi+there"));
        assert_eq!(scan.findings[0].location, "/form/0/value");
        let (unchanged, scan) = scanner().scan_form("a=1&b=2");
        assert!(unchanged.is_none() && scan.total == 0);
    }

    #[test]
    fn overlapping_detectors_report_once() {
        // A JWT is also a long high-entropy run; it is reported as a JWT only.
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(kinds_in(jwt), ["jwt"]);
    }

    #[test]
    fn many_findings_are_counted_beyond_the_reported_ones() {
        let text: String = (0..200).map(|i| format!("u{i}@example.com ")).collect();
        let (redacted, scan) = scanner().scan_text(&text);
        assert_eq!((scan.total, scan.findings.len()), (200, MAX_REPORTED));
        assert!(!redacted.unwrap().contains("@example.com"), "every match is redacted, reported or not");
        assert!(scan.summary().unwrap().contains("(+184 more)"));
    }
}
