//! End-to-end tests of `verify_export` over exports written independently of the crate's own
//! hashing code: canonical bytes come from serde_json's sorted compact writer (what the server
//! uses), leaf hashes and roots from sha2 and a literal RFC 6962 MTH.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use mandate_audit_verify::{
    Checkpoint, KeyParseError, NoteError, Reason, Report, VerifierKey, VerifyError, verify_export,
    verify_export_extending, verify_note,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "mandate.local/audit";

type Hash = [u8; 32];

/// Whether a failure has the expected reason.
type ReasonCheck = fn(&Reason) -> bool;

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// RFC 6962 MTH, recursively as the RFC states it.
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha256(&[&[1], &reference_root(&leaves[..k]), &reference_root(&leaves[k..])])
        }
    }
}

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn key_id(name: &str, key: &SigningKey) -> [u8; 4] {
    let digest = sha256(&[name.as_bytes(), &[0x0a, 0x01], key.verifying_key().as_bytes()]);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn vkey_string(name: &str, key: &SigningKey) -> String {
    let typed = [&[0x01], key.verifying_key().as_bytes().as_slice()].concat();
    format!("{name}+{}+{}", hex::encode(key_id(name, key)), STANDARD.encode(typed))
}

fn vkey(name: &str, key: &SigningKey) -> VerifierKey {
    vkey_string(name, key).parse().unwrap()
}

/// A checkpoint note exactly as docs/audit.md lays it out.
fn signed_note(origin: &str, key_name: &str, key: &SigningKey, size: u64, root: &Hash) -> String {
    let body = format!("{origin}\n{size}\n{}\n", STANDARD.encode(root));
    let blob = [key_id(key_name, key).as_slice(), &key.sign(body.as_bytes()).to_bytes()].concat();
    format!("{body}\n\u{2014} {key_name} {}\n", STANDARD.encode(blob))
}

/// Writes an export line by line, as `mandate audit export` does.
struct ExportWriter {
    key: SigningKey,
    lines: Vec<String>,
    leaves: Vec<Hash>,
    /// 1-based line number of each entry, by seq.
    entry_lines: Vec<usize>,
}

impl ExportWriter {
    fn new() -> Self {
        let header = json!({"log": {"format": "mandate-audit/v1", "origin": ORIGIN}});
        Self { key: signer(7), lines: vec![header.to_string()], leaves: Vec::new(), entry_lines: Vec::new() }
    }

    fn event(seq: usize, prev: &Hash) -> Value {
        let deny = seq % 3 == 1;
        json!({
            "v": 1,
            "seq": seq,
            "prev": hex::encode(prev),
            "ts": format!("2026-11-23T09:00:{:02}.{:03}Z", seq % 60, seq % 1000),
            "action": if deny { "token.issue" } else { "token.introspect" },
            "decision": if deny { "deny" } else { "allow" },
            "reason": if deny { json!("invalid_target") } else { Value::Null },
            "detail": format!("event {seq}: \"quoted\", tab\t, control \u{1}, café 😀"),
            "agent": format!("spiffe://mandate.local/agent/{}", seq % 5),
            "owner": "ops@example.com",
            "client": Value::Null,
            "resource": "https://api.example.com/",
            "scope": "read write",
            "jti": format!("jti-{seq}"),
            "correlation_id": format!("req-{}", seq / 2),
        })
    }

    fn entry(&mut self) -> &mut Self {
        let seq = self.leaves.len();
        let prev = self.leaves.last().copied().unwrap_or([0; 32]);
        self.push_event(Self::event(seq, &prev))
    }

    /// Appends an event other than the one `entry` would: the start of a rewritten history.
    fn rewritten_entry(&mut self) -> &mut Self {
        let seq = self.leaves.len();
        let prev = self.leaves.last().copied().unwrap_or([0; 32]);
        let mut event = Self::event(seq, &prev);
        event["decision"] = json!("deny");
        event["detail"] = json!("rewritten after the fact");
        self.push_event(event)
    }

    fn push_event(&mut self, event: Value) -> &mut Self {
        // JCS by the crate's own canonicaliser (serde_json's map order depends on build features).
        let canonical = String::from_utf8(mandate_audit_verify::canonical_json(&event).unwrap()).unwrap();
        self.leaves.push(sha256(&[&[0x00], canonical.as_bytes()]));
        self.lines.push(format!("{{\"entry\":{canonical}}}"));
        self.entry_lines.push(self.lines.len());
        self
    }

    fn entries(&mut self, count: usize) -> &mut Self {
        for _ in 0..count {
            self.entry();
        }
        self
    }

    fn checkpoint(&mut self) -> &mut Self {
        let size = self.leaves.len();
        self.checkpoint_of(size)
    }

    fn checkpoint_of(&mut self, size: usize) -> &mut Self {
        let root = reference_root(&self.leaves[..size]);
        let note = signed_note(ORIGIN, ORIGIN, &self.key, size as u64, &root);
        self.raw_checkpoint(&note)
    }

    fn raw_checkpoint(&mut self, note: &str) -> &mut Self {
        self.lines.push(json!({ "checkpoint": note }).to_string());
        self
    }

    /// The export with entries checkpointed every `every` entries and once at the end.
    fn with_entries(count: usize, every: usize) -> Self {
        let mut writer = Self::new();
        for _ in 0..count {
            writer.entry();
            if writer.leaves.len().is_multiple_of(every) && writer.leaves.len() < count {
                writer.checkpoint();
            }
        }
        writer.checkpoint();
        writer
    }

    fn text(&self) -> String {
        lines_text(&self.lines)
    }

    fn line_of(&self, seq: usize) -> u64 {
        self.entry_lines[seq] as u64
    }

    fn last_line(&self) -> u64 {
        self.lines.len() as u64
    }

    fn verifier_key(&self) -> VerifierKey {
        vkey(ORIGIN, &self.key)
    }

    fn verify(&self) -> Result<Report, VerifyError> {
        verify_text(&self.text(), &self.verifier_key())
    }
}

fn lines_text(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn verify_text(text: &str, key: &VerifierKey) -> Result<Report, VerifyError> {
    verify_export(text.as_bytes(), key)
}

fn verify_lines(writer: &ExportWriter, lines: &[String]) -> VerifyError {
    verify_text(&lines_text(lines), &writer.verifier_key()).unwrap_err()
}

/// Replaces `member` of the event on `line` (0-based index into `lines`) with `value`.
fn edit_event(lines: &mut [String], index: usize, member: &str, value: Value) {
    let mut line: Value = serde_json::from_str(&lines[index]).unwrap();
    line["entry"][member] = value;
    lines[index] = line.to_string();
}

fn altered(value: &Value) -> Value {
    match value {
        Value::Null => json!("x"),
        Value::String(text) => json!(format!("{text}x")),
        Value::Number(n) => json!(n.as_u64().unwrap() + 1),
        other => panic!("unexpected member {other}"),
    }
}

#[test]
fn valid_exports_verify() {
    for count in [0, 1, 2, 3, 7, 100] {
        let writer = ExportWriter::with_entries(count, 3);
        let report = writer.verify().unwrap_or_else(|err| panic!("{count} entries: {err}"));
        let expected_checkpoints = count.saturating_sub(1) / 3 + 1;
        assert_eq!(report.entries, count as u64);
        assert_eq!(report.checkpoints, expected_checkpoints as u64, "{count} entries");
        assert_eq!(report.root, reference_root(&writer.leaves));
    }
}

#[test]
fn empty_export_needs_a_size_zero_checkpoint() {
    let mut writer = ExportWriter::new();
    let err = writer.verify().unwrap_err();
    assert_eq!((err.line, err.seq), (1, None));
    assert!(matches!(err.reason, Reason::NoCheckpoint));
    writer.checkpoint();
    let report = writer.verify().unwrap();
    assert_eq!((report.entries, report.checkpoints), (0, 1));
    assert_eq!(hex::encode(report.root), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn trailing_newline_is_optional_but_blank_lines_are_not_allowed() {
    let writer = ExportWriter::with_entries(4, 2);
    let key = writer.verifier_key();
    let text = writer.text();
    assert!(verify_text(text.trim_end_matches('\n'), &key).is_ok());
    let err = verify_text(&format!("{text}\n"), &key).unwrap_err();
    assert_eq!(err.line, writer.last_line() + 1);
    assert!(matches!(err.reason, Reason::BlankLine));
    let mut lines = writer.lines.clone();
    lines.insert(3, "  ".into());
    let err = verify_lines(&writer, &lines);
    assert_eq!(err.line, 4);
    assert!(matches!(err.reason, Reason::BlankLine));
}

#[test]
fn checkpoints_may_cover_older_sizes_later_in_the_file() {
    let mut writer = ExportWriter::new();
    writer.entries(5).checkpoint_of(2).checkpoint_of(0).entries(6).checkpoint_of(9).checkpoint();
    let report = writer.verify().unwrap();
    assert_eq!((report.entries, report.checkpoints), (11, 4));
}

#[test]
fn reformatted_lines_still_verify_because_hashes_cover_canonical_bytes() {
    let writer = ExportWriter::with_entries(3, 10);
    let mut lines = writer.lines.clone();
    let event: Value = serde_json::from_str(&lines[2]).unwrap();
    lines[2] = serde_json::to_string_pretty(&event).unwrap().replace('\n', " ");
    assert!(verify_text(&lines_text(&lines), &writer.verifier_key()).is_ok());
}

#[test]
fn editing_any_field_of_a_middle_event_names_the_line() {
    let writer = ExportWriter::with_entries(9, 4);
    let seq = 5; // followed by another entry, not a checkpoint
    let index = writer.line_of(seq) as usize - 1;
    let event: Value = serde_json::from_str::<Value>(&writer.lines[index]).unwrap()["entry"].clone();
    for (member, value) in event.as_object().unwrap() {
        let mut lines = writer.lines.clone();
        edit_event(&mut lines, index, member, altered(value));
        let err = verify_lines(&writer, &lines);
        match member.as_str() {
            "seq" => {
                assert_eq!((err.line, err.seq), (writer.line_of(seq), Some(seq as u64 + 1)));
                assert!(matches!(err.reason, Reason::SeqMismatch { expected: 5 }), "{err}");
            }
            "prev" => {
                assert_eq!((err.line, err.seq), (writer.line_of(seq), Some(seq as u64)));
                let previous_line = Some(writer.line_of(seq - 1));
                assert!(matches!(err.reason, Reason::PrevMismatch { previous_line: p } if p == previous_line), "{err}");
            }
            _ => {
                // The edit changes this entry's leaf hash, which the next entry's prev names.
                assert_eq!((err.line, err.seq), (writer.line_of(seq + 1), Some(seq as u64 + 1)), "{member}");
                let previous_line = Some(writer.line_of(seq));
                assert!(matches!(err.reason, Reason::PrevMismatch { previous_line: p } if p == previous_line), "{err}");
            }
        }
    }
}

#[test]
fn adding_or_removing_a_member_is_an_edit() {
    let writer = ExportWriter::with_entries(4, 10);
    let index = writer.line_of(1) as usize - 1;
    for edit in ["add", "remove"] {
        let mut lines = writer.lines.clone();
        let mut line: Value = serde_json::from_str(&lines[index]).unwrap();
        let event = line["entry"].as_object_mut().unwrap();
        if edit == "add" {
            event.insert("extra".into(), json!(true));
        } else {
            event.remove("detail");
        }
        lines[index] = line.to_string();
        let err = verify_lines(&writer, &lines);
        assert_eq!((err.line, err.seq), (writer.line_of(2), Some(2)), "{edit}");
        assert!(matches!(err.reason, Reason::PrevMismatch { .. }));
    }
}

#[test]
fn editing_the_last_event_breaks_the_final_checkpoint() {
    let writer = ExportWriter::with_entries(7, 3);
    let index = writer.line_of(6) as usize - 1;
    let event: Value = serde_json::from_str::<Value>(&writer.lines[index]).unwrap()["entry"].clone();
    for member in ["detail", "decision", "ts", "jti", "v"] {
        let mut lines = writer.lines.clone();
        edit_event(&mut lines, index, member, altered(&event[member]));
        let err = verify_lines(&writer, &lines);
        assert_eq!((err.line, err.seq), (writer.last_line(), None), "{member}");
        assert!(matches!(err.reason, Reason::RootMismatch { size: 7 }), "{err}");
    }
}

#[test]
fn deleting_a_middle_entry_fails_at_the_next_one() {
    let writer = ExportWriter::with_entries(8, 5);
    let mut lines = writer.lines.clone();
    let deleted_line = writer.line_of(3);
    lines.remove(deleted_line as usize - 1);
    let err = verify_lines(&writer, &lines);
    assert_eq!((err.line, err.seq), (deleted_line, Some(4)));
    assert!(matches!(err.reason, Reason::SeqMismatch { expected: 3 }));
    assert_eq!(
        err.to_string(),
        format!("line {deleted_line} (seq 4): expected seq 3: an entry was removed, inserted or reordered")
    );
}

#[test]
fn deleting_the_last_entry_fails_at_the_final_checkpoint() {
    let writer = ExportWriter::with_entries(6, 4);
    let mut lines = writer.lines.clone();
    lines.remove(writer.line_of(5) as usize - 1);
    let err = verify_lines(&writer, &lines);
    assert_eq!((err.line, err.seq), (lines.len() as u64, None));
    assert!(matches!(err.reason, Reason::CheckpointBeyondEntries { size: 6, available: 5 }));
}

#[test]
fn swapping_two_entries_fails() {
    let writer = ExportWriter::with_entries(6, 10);
    let mut lines = writer.lines.clone();
    let (a, b) = (writer.line_of(2) as usize - 1, writer.line_of(3) as usize - 1);
    lines.swap(a, b);
    let err = verify_lines(&writer, &lines);
    assert_eq!((err.line, err.seq), (writer.line_of(2), Some(3)));
    assert!(matches!(err.reason, Reason::SeqMismatch { expected: 2 }));
}

#[test]
fn dropping_the_final_checkpoint_leaves_the_tail_unsigned() {
    let writer = ExportWriter::with_entries(7, 3);
    let mut lines = writer.lines.clone();
    lines.pop();
    let err = verify_lines(&writer, &lines);
    // Checkpoints cover 3 and 6 entries; seq 6 is the first entry after the last one.
    assert_eq!((err.line, err.seq), (writer.line_of(6), Some(6)));
    let checkpoint_line = writer.line_of(6) - 1;
    assert!(
        matches!(err.reason, Reason::TailNotCovered { checkpoint_line: l, covered: 6, entries: 7 } if l == checkpoint_line),
        "{err}"
    );
}

#[test]
fn a_stale_final_checkpoint_is_named_when_no_entry_follows_it() {
    let mut writer = ExportWriter::new();
    writer.entries(4).checkpoint_of(2);
    let err = writer.verify().unwrap_err();
    assert_eq!((err.line, err.seq), (writer.last_line(), None));
    assert!(matches!(err.reason, Reason::TailNotCovered { covered: 2, entries: 4, .. }));
}

#[test]
fn export_without_checkpoints_fails() {
    let mut writer = ExportWriter::new();
    writer.entries(3);
    let err = writer.verify().unwrap_err();
    assert_eq!((err.line, err.seq), (writer.line_of(0), Some(0)));
    assert!(matches!(err.reason, Reason::NoCheckpoint));
}

#[test]
fn checkpoint_signed_by_another_key_fails() {
    let writer = ExportWriter::with_entries(3, 10);
    let root = reference_root(&writer.leaves);
    for note in [
        signed_note(ORIGIN, ORIGIN, &signer(8), 3, &root),
        signed_note(ORIGIN, "someone.else/audit", &signer(8), 3, &root),
    ] {
        let mut lines = writer.lines.clone();
        *lines.last_mut().unwrap() = json!({ "checkpoint": note }).to_string();
        let err = verify_lines(&writer, &lines);
        assert_eq!((err.line, err.seq), (writer.last_line(), None));
        assert!(matches!(err.reason, Reason::Note(NoteError::NotSignedByKey(_))), "{err}");
    }
}

#[test]
fn checkpoint_claiming_more_entries_than_precede_it_fails() {
    let writer = ExportWriter::with_entries(5, 10);
    let mut lines = writer.lines.clone();
    // Move the final (valid) checkpoint up, before the last entry.
    let checkpoint = lines.pop().unwrap();
    lines.insert(writer.line_of(4) as usize - 1, checkpoint);
    let err = verify_lines(&writer, &lines);
    assert_eq!((err.line, err.seq), (writer.line_of(4), None));
    assert!(matches!(err.reason, Reason::CheckpointBeyondEntries { size: 5, available: 4 }));
}

#[test]
fn tampered_checkpoint_root_fails() {
    let writer = ExportWriter::with_entries(4, 10);
    let true_root = reference_root(&writer.leaves);
    let mut wrong_root = true_root;
    wrong_root[0] ^= 1;
    // Edited in place, the signature no longer verifies.
    let note = signed_note(ORIGIN, ORIGIN, &writer.key, 4, &true_root)
        .replace(&STANDARD.encode(true_root), &STANDARD.encode(wrong_root));
    let mut lines = writer.lines.clone();
    *lines.last_mut().unwrap() = json!({ "checkpoint": note }).to_string();
    let err = verify_lines(&writer, &lines);
    assert_eq!(err.line, writer.last_line());
    assert!(matches!(err.reason, Reason::Note(NoteError::InvalidSignature(_))), "{err}");
    // Signed by the right key but over the wrong root, the recomputed root disagrees.
    let note = signed_note(ORIGIN, ORIGIN, &writer.key, 4, &wrong_root);
    *lines.last_mut().unwrap() = json!({ "checkpoint": note }).to_string();
    let err = verify_lines(&writer, &lines);
    assert_eq!(err.line, writer.last_line());
    assert!(matches!(err.reason, Reason::RootMismatch { size: 4 }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("line {}: checkpoint root does not match the Merkle root of the first 4 entries", writer.last_line())
    );
}

#[test]
fn checkpoint_origin_must_be_the_key_name() {
    let writer = ExportWriter::with_entries(2, 10);
    let root = reference_root(&writer.leaves);
    let mut lines = writer.lines.clone();
    let note = signed_note("other.log/audit", ORIGIN, &writer.key, 2, &root);
    *lines.last_mut().unwrap() = json!({ "checkpoint": note }).to_string();
    let err = verify_lines(&writer, &lines);
    assert!(matches!(err.reason, Reason::OriginMismatch { ref found, .. } if found == "other.log/audit"));
}

#[test]
fn malformed_checkpoint_lines_fail() {
    let writer = ExportWriter::with_entries(2, 10);
    let line = writer.last_line();
    let cases: [(&str, ReasonCheck); 3] = [
        (r#"{"checkpoint":42}"#, |r| matches!(r, Reason::CheckpointNotString)),
        (r#"{"checkpoint":"not a note"}"#, |r| matches!(r, Reason::Note(NoteError::MissingFinalNewline))),
        (r#"{"checkpoint":"a\n\nb\n"}"#, |r| matches!(r, Reason::Note(NoteError::MalformedSignatureLine(1)))),
    ];
    for (text, expected) in cases {
        let mut lines = writer.lines.clone();
        *lines.last_mut().unwrap() = text.to_owned();
        let err = verify_lines(&writer, &lines);
        assert_eq!(err.line, line, "{text}");
        assert!(expected(&err.reason), "{text}: {err}");
    }
}

#[test]
fn header_must_come_first_and_match_the_key() {
    let writer = ExportWriter::with_entries(2, 10);
    let key = writer.verifier_key();
    let header_cases: [(String, ReasonCheck); 5] = [
        (writer.lines[1].clone(), |r| matches!(r, Reason::MissingHeader)),
        (
            json!({"log": {"format": "mandate-audit/v1", "origin": "evil.example/audit"}}).to_string(),
            |r| matches!(r, Reason::OriginMismatch { found, expected } if found == "evil.example/audit" && expected == ORIGIN),
        ),
        (
            json!({"log": {"format": "mandate-audit/v2", "origin": ORIGIN}}).to_string(),
            |r| matches!(r, Reason::UnsupportedFormat(f) if f == "mandate-audit/v2"),
        ),
        (json!({"log": {"origin": ORIGIN}}).to_string(), |r| matches!(r, Reason::MalformedHeader(_))),
        (json!({"log": "mandate-audit/v1"}).to_string(), |r| matches!(r, Reason::MalformedHeader(_))),
    ];
    for (header, expected) in header_cases {
        let mut lines = writer.lines.clone();
        lines[0] = header.clone();
        let err = verify_text(&lines_text(&lines), &key).unwrap_err();
        assert_eq!((err.line, err.seq), (1, None), "{header}");
        assert!(expected(&err.reason), "{header}: {err}");
    }
    let err = verify_text("", &key).unwrap_err();
    assert_eq!(err.line, 1);
    assert!(matches!(err.reason, Reason::MissingHeader));
    let mut lines = writer.lines.clone();
    lines.insert(2, writer.lines[0].clone());
    let err = verify_lines(&writer, &lines);
    assert_eq!(err.line, 3);
    assert!(matches!(err.reason, Reason::MisplacedHeader));
}

#[test]
fn malformed_lines_are_named() {
    let writer = ExportWriter::with_entries(3, 10);
    let index = writer.line_of(1) as usize - 1;
    let prev0 = hex::encode(writer.leaves[0]);
    let cases: Vec<(String, Option<u64>, ReasonCheck)> = vec![
        ("{\"entry\":".into(), None, |r| matches!(r, Reason::InvalidJson { .. })),
        ("[1,2]".into(), None, |r| matches!(r, Reason::NotATaggedObject)),
        ("{}".into(), None, |r| matches!(r, Reason::NotATaggedObject)),
        (r#"{"entry":{},"checkpoint":""}"#.into(), None, |r| matches!(r, Reason::NotATaggedObject)),
        (r#"{"comment":"hi"}"#.into(), None, |r| matches!(r, Reason::UnknownKind(k) if k == "comment")),
        (r#"{"entry":[1]}"#.into(), None, |r| matches!(r, Reason::EntryNotObject)),
        (r#"{"entry":{"prev":"00"}}"#.into(), None, |r| matches!(r, Reason::MissingSeq)),
        (r#"{"entry":{"seq":"1"}}"#.into(), None, |r| matches!(r, Reason::MissingSeq)),
        (r#"{"entry":{"seq":-1}}"#.into(), None, |r| matches!(r, Reason::MissingSeq)),
        (r#"{"entry":{"seq":1.0}}"#.into(), None, |r| matches!(r, Reason::MissingSeq)),
        (r#"{"entry":{"seq":1}}"#.into(), Some(1), |r| matches!(r, Reason::MissingPrev)),
        (r#"{"entry":{"seq":1,"prev":7}}"#.into(), Some(1), |r| matches!(r, Reason::MissingPrev)),
        (format!(r#"{{"entry":{{"seq":1,"prev":"{}"}}}}"#, prev0.to_uppercase()), Some(1), |r| {
            matches!(r, Reason::PrevMismatch { .. })
        }),
        (format!(r#"{{"entry":{{"seq":1,"prev":"{prev0}","x":0.5}}}}"#), Some(1), |r| {
            matches!(r, Reason::Canonical(_))
        }),
        (
            format!(r#"{{"entry":{{"seq":1,"prev":"{prev0}","x":1,"x":2}}}}"#),
            None,
            |r| matches!(r, Reason::InvalidJson { message, .. } if message.starts_with("duplicate key \"x\"")),
        ),
    ];
    for (text, seq, expected) in cases {
        let mut lines = writer.lines.clone();
        lines[index] = text.clone();
        let err = verify_lines(&writer, &lines);
        assert_eq!((err.line, err.seq), (writer.line_of(1), seq), "{text}: {err}");
        assert!(expected(&err.reason), "{text}: {err}");
    }
}

#[test]
fn first_entry_prev_must_be_zeros() {
    let writer = ExportWriter::with_entries(2, 10);
    let mut lines = writer.lines.clone();
    edit_event(&mut lines, 1, "prev", json!("1".repeat(64)));
    let err = verify_lines(&writer, &lines);
    assert_eq!((err.line, err.seq), (2, Some(0)));
    assert!(matches!(err.reason, Reason::PrevMismatch { previous_line: None }));
    assert!(err.to_string().contains("64 zeros"), "{err}");
}

#[test]
fn invalid_utf8_and_io_errors_are_reported() {
    let writer = ExportWriter::with_entries(1, 10);
    let mut bytes = writer.text().into_bytes();
    let line_two = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let at = line_two + bytes[line_two..].iter().position(|&b| b == b'c').unwrap(); // in "correlation_id"
    bytes[at] = 0xff;
    let err = verify_export(bytes.as_slice(), &writer.verifier_key()).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(matches!(err.reason, Reason::InvalidJson { .. }), "{err}");
    assert!(!err.to_string().contains("at line 1"), "{err}");

    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = verify_export(std::io::BufReader::new(Failing), &writer.verifier_key()).unwrap_err();
    assert_eq!(err.line, 1);
    assert!(matches!(err.reason, Reason::Io(_)));
    assert_eq!(err.to_string(), "line 1: cannot read the export: disk on fire");
}

#[test]
fn wrong_vkey_strings_are_rejected_at_parse() {
    let key = signer(7);
    let good = vkey_string(ORIGIN, &key);
    let (name, rest) = good.split_once('+').unwrap();
    let (id, key_b64) = rest.split_once('+').unwrap();
    let mut ed448ish = STANDARD.decode(key_b64).unwrap();
    ed448ish[0] = 0x05;
    let digest = sha256(&[name.as_bytes(), b"\n", &ed448ish]);
    let wrong_type = format!("{name}+{}+{}", hex::encode(&digest[..4]), STANDARD.encode(&ed448ish));
    let cases = [
        (format!("{name}+deadbeef+{key_b64}"), KeyParseError::KeyIdMismatch),
        (format!("{name}+{id}+{}", &key_b64[..key_b64.len() - 1]), KeyParseError::InvalidBase64),
        (format!("{name}+{id}+{}!", &key_b64[..key_b64.len() - 1]), KeyParseError::InvalidBase64),
        (wrong_type, KeyParseError::UnsupportedKeyType(0x05)),
        (format!("{name}+{}+{key_b64}", &id[..6]), KeyParseError::InvalidKeyId),
        (format!("{name} x+{id}+{key_b64}"), KeyParseError::InvalidName),
        (ORIGIN.to_owned(), KeyParseError::Malformed),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<VerifierKey>().unwrap_err(), expected, "{text}");
    }
    let parsed: VerifierKey = good.parse().unwrap();
    assert_eq!(parsed.name(), ORIGIN);
    assert_eq!(parsed.to_string(), good);
}

#[test]
fn verifies_a_larger_export() {
    let writer = ExportWriter::with_entries(5000, 256);
    let report = writer.verify().unwrap();
    assert_eq!((report.entries, report.checkpoints), (5000, 20));
}

/// A checkpoint of the first `size` entries as an auditor would have saved it, verified.
fn saved_checkpoint(writer: &ExportWriter, size: usize) -> Checkpoint {
    let note = signed_note(ORIGIN, ORIGIN, &writer.key, size as u64, &reference_root(&writer.leaves[..size]));
    verify_note(&note, &writer.verifier_key()).unwrap()
}

fn verify_extending(writer: &ExportWriter, trusted: &Checkpoint) -> Result<Report, VerifyError> {
    verify_export_extending(writer.text().as_bytes(), &writer.verifier_key(), trusted)
}

#[test]
fn an_export_extending_a_saved_checkpoint_verifies() {
    let writer = ExportWriter::with_entries(13, 4);
    for size in [0, 1, 4, 6, 8, 12, 13] {
        let report =
            verify_extending(&writer, &saved_checkpoint(&writer, size)).unwrap_or_else(|e| panic!("{size}: {e}"));
        assert_eq!(report.entries, 13);
    }
}

#[test]
fn history_forked_after_a_saved_checkpoint_is_detected() {
    let original = ExportWriter::with_entries(10, 5);
    // The auditor saved the checkpoint of size 6; later the log is rewritten from seq 3 on and
    // re-signed. The new export is internally consistent, so only the fork check catches it.
    let trusted = saved_checkpoint(&original, 6);
    let mut forked = ExportWriter::new();
    forked.entries(3).rewritten_entry().entries(6).checkpoint();
    forked.verify().unwrap();
    let err = verify_extending(&forked, &trusted).unwrap_err();
    assert!(matches!(err.reason, Reason::Forked { trusted: 6, last_seq: 5 }), "{err}");
    assert_eq!(err.line, forked.last_line());
    assert!(err.to_string().contains("seq 0..=5"), "{err}");
    // A fork after the saved size is not a rewrite of anything the auditor saw.
    let mut later = ExportWriter::new();
    later.entries(7).rewritten_entry().entries(2).checkpoint();
    verify_extending(&later, &trusted).unwrap();
}

#[test]
fn an_export_shorter_than_a_saved_checkpoint_is_detected() {
    let original = ExportWriter::with_entries(10, 5);
    let trusted = saved_checkpoint(&original, 9);
    let truncated = ExportWriter::with_entries(8, 5);
    let err = verify_extending(&truncated, &trusted).unwrap_err();
    assert!(matches!(err.reason, Reason::ShorterThanTrusted { trusted: 9, entries: 8 }), "{err}");
}

#[test]
fn the_fork_check_runs_only_after_the_export_itself_verifies() {
    let writer = ExportWriter::with_entries(6, 3);
    let trusted = saved_checkpoint(&writer, 3);
    let mut lines = writer.lines.clone();
    edit_event(&mut lines, 2, "detail", json!("edited"));
    let err = verify_export_extending(lines_text(&lines).as_bytes(), &writer.verifier_key(), &trusted).unwrap_err();
    assert!(matches!(err.reason, Reason::PrevMismatch { .. }), "{err}");
}
