//! Verification of a Mandate audit export (JSONL), as specified in `docs/audit.md`.

use std::io::{BufRead, Read};

use serde_json::Value;

use crate::canonical::CanonicalError;
use crate::chain::{Chain, ChainError};
use crate::merkle::{Hash, consistency_proof, merkle_root, verify_consistency};
use crate::note::{Checkpoint, NoteError, VerifierKey, verify_note};
use crate::strict_json;

/// The only export format this verifier understands.
pub const EXPORT_FORMAT: &str = "mandate-audit/v1";

/// Longest line accepted, so a corrupt file cannot make the verifier buffer it whole. Real
/// lines are a few hundred bytes; the margin is deliberately huge.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Number of entries, all chained and covered by the final checkpoint.
    pub entries: u64,
    /// Number of checkpoints whose signature and root verified.
    pub checkpoints: u64,
    /// Merkle root over all entries (equal to the final checkpoint's root).
    pub root: Hash,
}

/// The first problem found in an export: where it is and why it fails.
#[derive(Debug, thiserror::Error)]
#[error("line {line}{}: {reason}", seq_label(.seq))]
pub struct VerifyError {
    /// 1-based line number in the export.
    pub line: u64,
    /// The `seq` of the entry concerned, when there is one and it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: Reason,
}

fn seq_label(seq: &Option<u64>) -> String {
    seq.map(|seq| format!(" (seq {seq})")).unwrap_or_default()
}

/// Why an export failed verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// Reading the export failed.
    #[error("cannot read the export: {0}")]
    Io(std::io::Error),
    /// A line exceeds the length limit.
    #[error("line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// An empty line anywhere but after the final newline.
    #[error("blank line")]
    BlankLine,
    /// The line is not one JSON value, or has duplicate object keys.
    #[error("invalid JSON at column {column}: {message}")]
    InvalidJson {
        /// 1-based column (byte) where parsing failed.
        column: usize,
        /// The parser's description of the problem.
        message: String,
    },
    /// Every line must be an object with exactly one member naming its kind.
    #[error("expected an object with exactly one member: \"log\", \"entry\" or \"checkpoint\"")]
    NotATaggedObject,
    /// The member name is not a known line kind.
    #[error("unknown line kind {0:?}")]
    UnknownKind(String),
    /// The export does not start with the `{"log":...}` header.
    #[error("the first line must be the {{\"log\":...}} header")]
    MissingHeader,
    /// A second header after the first line.
    #[error("the {{\"log\":...}} header may only be the first line")]
    MisplacedHeader,
    /// The header is not an object with string `format` and `origin`.
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),
    /// The header names a format other than [`EXPORT_FORMAT`].
    #[error("unsupported format {0:?}, expected {EXPORT_FORMAT:?}")]
    UnsupportedFormat(String),
    /// A header or checkpoint origin differs from the verifier key's name.
    #[error("origin {found:?} does not match the key name {expected:?}")]
    OriginMismatch {
        /// The origin in the export.
        found: String,
        /// The verifier key's name.
        expected: String,
    },
    /// The event is not a JSON object.
    #[error("entry is not a JSON object")]
    EntryNotObject,
    /// `seq` is missing or not a non-negative integer.
    #[error("entry has no integer \"seq\"")]
    MissingSeq,
    /// `seq` is not the next number (check 1).
    #[error("expected seq {expected}: an entry was removed, inserted or reordered")]
    SeqMismatch {
        /// The seq the position in the log calls for.
        expected: u64,
    },
    /// `prev` is missing or not a string.
    #[error("entry has no string \"prev\"")]
    MissingPrev,
    /// `prev` differs from the recomputed leaf hash of the previous entry (check 2).
    #[error("\"prev\" is not the leaf hash of the previous entry{}: that entry (or this prev) was altered", previous_line_label(.previous_line))]
    PrevMismatch {
        /// Line of the previous entry, or `None` for seq 0 (whose prev must be all zeros).
        previous_line: Option<u64>,
    },
    /// The event has no canonical form.
    #[error("entry cannot be canonicalised: {0}")]
    Canonical(CanonicalError),
    /// The checkpoint member is not a string.
    #[error("checkpoint is not a JSON string")]
    CheckpointNotString,
    /// The checkpoint's signature or body is invalid (check 3).
    #[error("checkpoint rejected: {0}")]
    Note(NoteError),
    /// The checkpoint claims more entries than precede it (check 4).
    #[error("checkpoint covers {size} entries but only {available} precede it")]
    CheckpointBeyondEntries {
        /// The checkpoint's tree size.
        size: u64,
        /// Entries read before it.
        available: u64,
    },
    /// The checkpoint root differs from the recomputed Merkle root (check 4).
    #[error("checkpoint root does not match the Merkle root of the first {size} entries")]
    RootMismatch {
        /// The checkpoint's tree size.
        size: u64,
    },
    /// The export has no checkpoint at all (check 5).
    #[error("the export has no checkpoint, so none of it is signed")]
    NoCheckpoint,
    /// The last checkpoint does not cover every entry (check 5).
    #[error(
        "the last checkpoint (line {checkpoint_line}) covers {covered} of {entries} entries; later entries are not signed"
    )]
    TailNotCovered {
        /// Line of the last checkpoint.
        checkpoint_line: u64,
        /// Its tree size.
        covered: u64,
        /// Entries in the export.
        entries: u64,
    },
    /// The export holds fewer entries than a checkpoint the auditor saved earlier (fork check).
    #[error(
        "a trusted checkpoint covers {trusted} entries but the export has only {entries}: entries {entries}.. were removed"
    )]
    ShorterThanTrusted {
        /// The trusted checkpoint's tree size.
        trusted: u64,
        /// Entries in the export.
        entries: u64,
    },
    /// The export does not extend a checkpoint the auditor saved earlier (fork check).
    #[error(
        "history was rewritten: entries seq 0..={last_seq} differ from the trusted checkpoint of size {trusted} (no consistency proof to the final checkpoint)"
    )]
    Forked {
        /// The trusted checkpoint's tree size.
        trusted: u64,
        /// The last seq the trusted checkpoint covers.
        last_seq: u64,
    },
}

fn previous_line_label(line: &Option<u64>) -> String {
    match line {
        Some(line) => format!(" (line {line})"),
        None => " (seq 0 needs 64 zeros)".to_owned(),
    }
}

/// Verifies a JSONL audit export against the log's verifier key.
///
/// Performs the five checks of `docs/audit.md`, stopping at the first failure: entries are
/// numbered 0, 1, 2, …; each `prev` is the leaf hash of the entry before; every checkpoint is
/// signed by `key`; every checkpoint root matches the entries before it; the last checkpoint
/// covers every entry. The header must come first and name `key`'s name as origin, as must every
/// checkpoint. Memory use is 32 bytes per entry (its leaf hash).
pub fn verify_export<R: BufRead>(reader: R, key: &VerifierKey) -> Result<Report, VerifyError> {
    verify(reader, key, None)
}

/// [`verify_export`], then fork detection against a checkpoint saved earlier (already verified by
/// the caller, e.g. with [`verify_note`]): the export must hold at least `trusted.size` entries,
/// and an RFC 9162 consistency proof, computed here from the export's own leaves, must lead from
/// `trusted` to the final checkpoint. An export rewritten after `trusted` was published fails
/// even when it is internally consistent and freshly signed.
pub fn verify_export_extending<R: BufRead>(
    reader: R,
    key: &VerifierKey,
    trusted: &Checkpoint,
) -> Result<Report, VerifyError> {
    verify(reader, key, Some(trusted))
}

fn verify<R: BufRead>(mut reader: R, key: &VerifierKey, trusted: Option<&Checkpoint>) -> Result<Report, VerifyError> {
    let mut verifier = ExportVerifier::new(key);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let line = verifier.line + 1;
        let read = (&mut reader).take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut buffer);
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                return Err(VerifyError { line, seq: None, reason: Reason::Io(err) });
            }
        }
        verifier.line = line;
        let content = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        if content.len() as u64 > MAX_LINE_BYTES {
            return Err(verifier.fail(None, Reason::LineTooLong));
        }
        verifier.process_line(content)?;
    }
    let last_line = verifier.line;
    let leaves = std::mem::take(&mut verifier.leaves);
    let report = verifier.finish()?;
    if let Some(trusted) = trusted {
        check_extends(trusted, &leaves, &report).map_err(|reason| VerifyError {
            line: last_line,
            seq: None,
            reason,
        })?;
    }
    Ok(report)
}

/// The fork check: the verified export's tree must extend the trusted one.
fn check_extends(trusted: &Checkpoint, leaves: &[Hash], report: &Report) -> Result<(), Reason> {
    let Some(first) = usize::try_from(trusted.size).ok().filter(|size| *size <= leaves.len()) else {
        return Err(Reason::ShorterThanTrusted { trusted: trusted.size, entries: report.entries });
    };
    let proof = consistency_proof(first, leaves);
    if verify_consistency(trusted.size, report.entries, &trusted.root, &report.root, &proof) {
        return Ok(());
    }
    Err(Reason::Forked { trusted: trusted.size, last_seq: trusted.size.saturating_sub(1) })
}

/// A checkpoint that verified, remembered for the final coverage check.
#[derive(Debug, Clone, Copy)]
struct SeenCheckpoint {
    line: u64,
    size: u64,
}

/// State carried from line to line. Only leaf hashes are kept, never the events themselves.
struct ExportVerifier<'k> {
    key: &'k VerifierKey,
    /// Line number of the line being processed (0 before the first).
    line: u64,
    leaves: Vec<Hash>,
    /// Checks 1 and 2, and the incremental root of all `leaves`, so a checkpoint covering
    /// everything costs O(log n).
    chain: Chain,
    last_entry_line: Option<u64>,
    checkpoints: u64,
    last_checkpoint: Option<SeenCheckpoint>,
    /// The first entry read after the last checkpoint: the one to name if the tail is unsigned.
    first_entry_after_checkpoint: Option<(u64, u64)>,
}

impl<'k> ExportVerifier<'k> {
    fn new(key: &'k VerifierKey) -> Self {
        Self {
            key,
            line: 0,
            leaves: Vec::new(),
            chain: Chain::default(),
            last_entry_line: None,
            checkpoints: 0,
            last_checkpoint: None,
            first_entry_after_checkpoint: None,
        }
    }

    fn fail(&self, seq: Option<u64>, reason: Reason) -> VerifyError {
        VerifyError { line: self.line, seq, reason }
    }

    fn entry_count(&self) -> u64 {
        self.chain.size()
    }

    fn process_line(&mut self, content: &[u8]) -> Result<(), VerifyError> {
        if content.iter().all(u8::is_ascii_whitespace) {
            return Err(self.fail(None, Reason::BlankLine));
        }
        let value = strict_json::parse(content).map_err(|err| self.fail(None, invalid_json(&err)))?;
        let (kind, body) = single_member(&value).ok_or_else(|| self.fail(None, Reason::NotATaggedObject))?;
        match (self.line, kind) {
            (1, "log") => self.header(body),
            (1, _) => Err(self.fail(None, Reason::MissingHeader)),
            (_, "log") => Err(self.fail(None, Reason::MisplacedHeader)),
            (_, "entry") => self.entry(body),
            (_, "checkpoint") => self.checkpoint(body),
            (_, other) => Err(self.fail(None, Reason::UnknownKind(other.to_owned()))),
        }
    }

    /// Checks `{"format":"mandate-audit/v1","origin":<key name>}`; other members are ignored.
    fn header(&self, body: &Value) -> Result<(), VerifyError> {
        let malformed = |what| self.fail(None, Reason::MalformedHeader(what));
        let Value::Object(header) = body else {
            return Err(malformed("\"log\" is not an object"));
        };
        let format = header.get("format").and_then(Value::as_str).ok_or_else(|| malformed("no string \"format\""))?;
        if format != EXPORT_FORMAT {
            return Err(self.fail(None, Reason::UnsupportedFormat(format.to_owned())));
        }
        let origin = header.get("origin").and_then(Value::as_str).ok_or_else(|| malformed("no string \"origin\""))?;
        self.check_origin(origin)
    }

    fn check_origin(&self, origin: &str) -> Result<(), VerifyError> {
        if origin == self.key.name() {
            return Ok(());
        }
        let reason = Reason::OriginMismatch { found: origin.to_owned(), expected: self.key.name().to_owned() };
        Err(self.fail(None, reason))
    }

    /// Checks 1 and 2 for one event, then records its leaf hash.
    fn entry(&mut self, event: &Value) -> Result<(), VerifyError> {
        let leaf = self.chain.append(event).map_err(|error| self.chain_failure(error))?;
        self.leaves.push(leaf);
        if self.first_entry_after_checkpoint.is_none() {
            self.first_entry_after_checkpoint = Some((self.line, self.chain.size() - 1));
        }
        self.last_entry_line = Some(self.line);
        Ok(())
    }

    /// A broken chain, reported with the lines this verifier knows about.
    fn chain_failure(&self, error: ChainError) -> VerifyError {
        match error {
            ChainError::NotObject => self.fail(None, Reason::EntryNotObject),
            ChainError::MissingSeq => self.fail(None, Reason::MissingSeq),
            ChainError::SeqMismatch { found, expected } => self.fail(Some(found), Reason::SeqMismatch { expected }),
            ChainError::MissingPrev { seq } => self.fail(Some(seq), Reason::MissingPrev),
            ChainError::PrevMismatch { seq } => {
                self.fail(Some(seq), Reason::PrevMismatch { previous_line: self.last_entry_line })
            }
            ChainError::Canonical { seq, error } => self.fail(Some(seq), Reason::Canonical(error)),
        }
    }

    /// Checks 3 and 4 for one checkpoint.
    fn checkpoint(&mut self, body: &Value) -> Result<(), VerifyError> {
        let Value::String(note) = body else {
            return Err(self.fail(None, Reason::CheckpointNotString));
        };
        let checkpoint = verify_note(note, self.key).map_err(|err| self.fail(None, Reason::Note(err)))?;
        self.check_origin(&checkpoint.origin)?;
        let available = self.entry_count();
        if checkpoint.size > available {
            let reason = Reason::CheckpointBeyondEntries { size: checkpoint.size, available };
            return Err(self.fail(None, reason));
        }
        if self.root_of_first(checkpoint.size) != checkpoint.root {
            return Err(self.fail(None, Reason::RootMismatch { size: checkpoint.size }));
        }
        self.checkpoints += 1;
        self.last_checkpoint = Some(SeenCheckpoint { line: self.line, size: checkpoint.size });
        self.first_entry_after_checkpoint = None;
        Ok(())
    }

    /// Merkle root of the first `size` entries (`size` ≤ entries read so far).
    fn root_of_first(&self, size: u64) -> Hash {
        if size == self.entry_count() {
            return self.chain.root();
        }
        // Older tree sizes are rare in an export (checkpoints follow what they cover), so a
        // full recomputation over the prefix is acceptable here.
        let prefix = usize::try_from(size).map_or(&self.leaves[..], |size| &self.leaves[..size]);
        merkle_root(prefix)
    }

    /// Check 5, and the requirement that the file starts with a header.
    fn finish(self) -> Result<Report, VerifyError> {
        if self.line == 0 {
            return Err(VerifyError { line: 1, seq: None, reason: Reason::MissingHeader });
        }
        let entries = self.entry_count();
        let Some(last) = self.last_checkpoint else {
            let (line, seq) =
                self.first_entry_after_checkpoint.map_or((self.line, None), |(line, seq)| (line, Some(seq)));
            return Err(VerifyError { line, seq, reason: Reason::NoCheckpoint });
        };
        if last.size != entries {
            let (line, seq) =
                self.first_entry_after_checkpoint.map_or((last.line, None), |(line, seq)| (line, Some(seq)));
            let reason = Reason::TailNotCovered { checkpoint_line: last.line, covered: last.size, entries };
            return Err(VerifyError { line, seq, reason });
        }
        Ok(Report { entries, checkpoints: self.checkpoints, root: self.chain.root() })
    }
}

/// Drops serde_json's " at line 1 column N" suffix: the export line is reported separately and
/// a JSONL line never spans lines, so only the column is worth keeping.
fn invalid_json(err: &serde_json::Error) -> Reason {
    let full = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    let message = full.strip_suffix(&position).unwrap_or(&full).to_owned();
    Reason::InvalidJson { column: err.column(), message }
}

/// The sole member of a JSON object, e.g. `("entry", {...})`.
fn single_member(value: &Value) -> Option<(&str, &Value)> {
    let Value::Object(members) = value else {
        return None;
    };
    let mut iter = members.iter();
    match (iter.next(), iter.next()) {
        (Some((kind, body)), None) => Some((kind.as_str(), body)),
        _ => None,
    }
}
