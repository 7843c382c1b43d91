//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 verifier keys, and the
//! tlog-checkpoint body they carry (<https://c2sp.org/tlog-checkpoint>).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte of plain Ed25519 keys in the C2SP signed-note registry.
const ED25519_KEY_TYPE: u8 = 0x01;
/// Every signature line starts with an em dash (U+2014) and a space.
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";
/// Bytes of the key id that prefixes each signature.
const KEY_ID_LEN: usize = 4;
/// The spec asks verifiers to accept at least 16 signatures; the cap bounds the work an
/// untrusted note can cause (it matches Go's `golang.org/x/mod/sumdb/note`).
const MAX_SIGNATURES: usize = 100;

/// A C2SP Ed25519 verifier key, parsed from `<name>+<hex key id>+<base64(0x01 || public key)>`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: [u8; KEY_ID_LEN],
    key: VerifyingKey,
}

/// Why a verifier key string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The string is not three `+`-separated fields.
    #[error("verifier key must have the form <name>+<hex key id>+<base64 key>")]
    Malformed,
    /// The name is empty or contains whitespace or `+`.
    #[error("key name must be non-empty with no spaces or '+'")]
    InvalidName,
    /// The key id field is not exactly 8 hex digits.
    #[error("key id must be 8 hex digits")]
    InvalidKeyId,
    /// The key field is not standard padded base64.
    #[error("key is not valid standard base64")]
    InvalidBase64,
    /// The decoded key is empty.
    #[error("key is empty")]
    EmptyKey,
    /// The key's type byte is not Ed25519 (`0x01`).
    #[error("unsupported key type 0x{0:02x} (only Ed25519, 0x01, is supported)")]
    UnsupportedKeyType(u8),
    /// An Ed25519 public key must be 32 bytes.
    #[error("Ed25519 public key must be 32 bytes, got {0}")]
    InvalidKeyLength(usize),
    /// The key id is not the one derived from the name and key.
    #[error("key id does not match the name and public key")]
    KeyIdMismatch,
    /// The 32 bytes are not a valid Ed25519 point.
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
}

impl FromStr for VerifierKey {
    type Err = KeyParseError;

    fn from_str(vkey: &str) -> Result<Self, Self::Err> {
        // Split from the left: the name and id cannot contain '+', but base64 can.
        let (name, rest) = vkey.split_once('+').ok_or(KeyParseError::Malformed)?;
        let (id_hex, key_b64) = rest.split_once('+').ok_or(KeyParseError::Malformed)?;
        if !is_valid_key_name(name) {
            return Err(KeyParseError::InvalidName);
        }
        let key_id = parse_key_id(id_hex)?;
        let typed_key = STANDARD.decode(key_b64).map_err(|_| KeyParseError::InvalidBase64)?;
        if key_id != derive_key_id(name, &typed_key) {
            return Err(KeyParseError::KeyIdMismatch);
        }
        let key = parse_ed25519_key(&typed_key)?;
        Ok(Self { name: name.to_owned(), key_id, key })
    }
}

impl VerifierKey {
    /// The key name, which for Mandate audit logs is also the log origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a signature line's name and key id designate this key.
    fn is_designated_by(&self, name: &str, key_id: &[u8]) -> bool {
        self.name == name && self.key_id == key_id
    }
}

/// Formats the key back into its vkey string.
impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut typed_key = vec![ED25519_KEY_TYPE];
        typed_key.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex::encode(self.key_id), STANDARD.encode(typed_key))
    }
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VerifierKey").field(&self.to_string()).finish()
    }
}

/// C2SP key names: non-empty, no whitespace, no `+` (the vkey field separator).
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

fn parse_key_id(id_hex: &str) -> Result<[u8; KEY_ID_LEN], KeyParseError> {
    if id_hex.len() != 2 * KEY_ID_LEN {
        return Err(KeyParseError::InvalidKeyId);
    }
    let bytes = hex::decode(id_hex).map_err(|_| KeyParseError::InvalidKeyId)?;
    bytes.try_into().map_err(|_| KeyParseError::InvalidKeyId)
}

/// `SHA-256(name || 0x0A || type byte || public key)[..4]`; `typed_key` starts with the type byte.
fn derive_key_id(name: &str, typed_key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new().chain_update(name).chain_update(b"\n").chain_update(typed_key).finalize();
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
    key_id
}

fn parse_ed25519_key(typed_key: &[u8]) -> Result<VerifyingKey, KeyParseError> {
    let (&key_type, public) = typed_key.split_first().ok_or(KeyParseError::EmptyKey)?;
    if key_type != ED25519_KEY_TYPE {
        return Err(KeyParseError::UnsupportedKeyType(key_type));
    }
    let public: &[u8; 32] = public.try_into().map_err(|_| KeyParseError::InvalidKeyLength(public.len()))?;
    VerifyingKey::from_bytes(public).map_err(|_| KeyParseError::InvalidPublicKey)
}

/// A parsed C2SP checkpoint body: the signed head of a log's Merkle tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (first line).
    pub origin: String,
    /// Number of leaves in the tree (second line).
    pub size: u64,
    /// RFC 9162 root hash of the tree (third line).
    pub root: Hash,
}

/// Why a signed note or checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// A note must end with a newline.
    #[error("note does not end with a newline")]
    MissingFinalNewline,
    /// No blank line separates the text from the signature lines.
    #[error("note has no blank line before its signatures")]
    MissingSignatureBlock,
    /// Only newline is allowed among the ASCII control characters.
    #[error("note contains a control character other than newline")]
    ControlCharacter,
    /// A signature line is not `— <name> <base64(key id || signature)>`.
    #[error("malformed signature line {0}")]
    MalformedSignatureLine(usize),
    /// More signature lines than a verifier is willing to process.
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// A signature claims to be from the given key but does not verify.
    #[error("signature by key {0} does not verify")]
    InvalidSignature(String),
    /// No signature line names the given key.
    #[error("note is not signed by key {0}")]
    NotSignedByKey(String),
    /// A checkpoint needs origin, size and root lines.
    #[error("checkpoint needs origin, tree size and root lines")]
    CheckpointTooShort,
    /// The origin line is empty.
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    /// The size line is not a decimal u64 without leading zeros.
    #[error("checkpoint tree size {0:?} is not a decimal integer without leading zeros")]
    InvalidTreeSize(String),
    /// The root line is not standard base64 of 32 bytes.
    #[error("checkpoint root is not base64 of 32 bytes")]
    InvalidRoot,
    /// Extension lines, when present, must be non-empty.
    #[error("checkpoint has an empty extension line")]
    EmptyExtensionLine,
}

/// Verifies a C2SP signed note against `key` and returns its signed text (ending in `\n`).
///
/// Signature lines for other key names or key ids are ignored, as the spec requires; a
/// signature from `key` that fails to verify rejects the note, and so does the absence of one.
pub fn verify_signed_note<'a>(note: &'a str, key: &VerifierKey) -> Result<&'a str, NoteError> {
    if !note.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    if note.chars().any(|c| c < '\u{20}' && c != '\n') {
        return Err(NoteError::ControlCharacter);
    }
    // The last blank line is the separator: signature lines are never empty, so any blank
    // line before it belongs to the text.
    let separator = note.rfind("\n\n").ok_or(NoteError::MissingSignatureBlock)?;
    let (text, signatures) = (&note[..=separator], &note[separator + 2..]);
    let mut verified = false;
    let lines: Vec<&str> = signatures.lines().collect();
    if lines.is_empty() {
        return Err(NoteError::MissingSignatureBlock);
    }
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures);
    }
    for (number, line) in lines.into_iter().enumerate() {
        let (name, blob) = parse_signature_line(line).ok_or(NoteError::MalformedSignatureLine(number + 1))?;
        let (key_id, signature) = blob.split_at(KEY_ID_LEN);
        if !key.is_designated_by(name, key_id) {
            continue;
        }
        if !signature_verifies(&key.key, text.as_bytes(), signature) {
            return Err(NoteError::InvalidSignature(key.to_string()));
        }
        verified = true;
    }
    if verified { Ok(text) } else { Err(NoteError::NotSignedByKey(key.to_string())) }
}

/// Splits `— <name> <base64>` into the name and the decoded key id + signature bytes.
fn parse_signature_line(line: &str) -> Option<(&str, Vec<u8>)> {
    let (name, blob_b64) = line.strip_prefix(SIGNATURE_LINE_PREFIX)?.split_once(' ')?;
    let blob = STANDARD.decode(blob_b64).ok()?;
    // A signature must carry at least one byte after the key id.
    (is_valid_key_name(name) && blob.len() > KEY_ID_LEN).then_some((name, blob))
}

fn signature_verifies(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
        return false;
    };
    // Strict verification rejects malleable and small-order forms no honest signer produces.
    key.verify_strict(message, &Signature::from_bytes(signature)).is_ok()
}

/// Parses a tlog-checkpoint body: origin, decimal tree size, base64 root, then optional
/// non-empty extension lines (accepted and ignored). `text` must end with `\n`.
pub fn parse_checkpoint(text: &str) -> Result<Checkpoint, NoteError> {
    let body = text.strip_suffix('\n').ok_or(NoteError::MissingFinalNewline)?;
    let mut lines = body.split('\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(NoteError::CheckpointTooShort);
    };
    if origin.is_empty() {
        return Err(NoteError::EmptyOrigin);
    }
    if lines.any(str::is_empty) {
        return Err(NoteError::EmptyExtensionLine);
    }
    Ok(Checkpoint { origin: origin.to_owned(), size: parse_tree_size(size)?, root: parse_root(root)? })
}

fn parse_tree_size(line: &str) -> Result<u64, NoteError> {
    let invalid = || NoteError::InvalidTreeSize(line.to_owned());
    let digits_only = !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = line.len() > 1 && line.starts_with('0');
    if !digits_only || leading_zero {
        return Err(invalid());
    }
    line.parse().map_err(|_| invalid())
}

fn parse_root(line: &str) -> Result<Hash, NoteError> {
    let bytes = STANDARD.decode(line).map_err(|_| NoteError::InvalidRoot)?;
    bytes.try_into().map_err(|_| NoteError::InvalidRoot)
}

/// Verifies a signed checkpoint note under `key` and parses its body.
///
/// This does not require the checkpoint origin to equal the key name; callers that need that
/// (like [`verify_export`](crate::verify_export)) check it themselves.
pub fn verify_note(note: &str, key: &VerifierKey) -> Result<Checkpoint, NoteError> {
    parse_checkpoint(verify_signed_note(note, key)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    const EXAMPLE_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const EXAMPLE_TEXT: &str = "This is an example message.\n";
    const EXAMPLE_SIGNATURE_LINE: &str = "\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    fn example_key() -> VerifierKey {
        EXAMPLE_VKEY.parse().unwrap()
    }

    fn example_note() -> String {
        format!("{EXAMPLE_TEXT}\n{EXAMPLE_SIGNATURE_LINE}")
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn vkey_for(name: &str, key: &SigningKey) -> String {
        let mut typed = vec![ED25519_KEY_TYPE];
        typed.extend_from_slice(key.verifying_key().as_bytes());
        let id = Sha256::new().chain_update(name).chain_update([0x0a]).chain_update(&typed).finalize();
        format!("{name}+{}+{}", hex::encode(&id[..4]), STANDARD.encode(typed))
    }

    fn signature_line(name: &str, key: &SigningKey, text: &str) -> String {
        let vkey: VerifierKey = vkey_for(name, key).parse().unwrap();
        let mut blob = vkey.key_id.to_vec();
        blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
        format!("\u{2014} {name} {}\n", STANDARD.encode(blob))
    }

    #[test]
    fn parses_the_spec_vkey_and_round_trips_it() {
        let key = example_key();
        assert_eq!(key.name(), "example.com/foo");
        assert_eq!(hex::encode(key.key_id), "530d903a");
        assert_eq!(key.to_string(), EXAMPLE_VKEY);
        assert!(format!("{key:?}").contains(EXAMPLE_VKEY));
    }

    #[test]
    fn rejects_bad_vkeys() {
        let good = vkey_for("mandate.local/audit", &signing_key());
        let (name, rest) = good.split_once('+').unwrap();
        let (id, key_b64) = rest.split_once('+').unwrap();
        let mut wrong_type = STANDARD.decode(key_b64).unwrap();
        wrong_type[0] = 0x02;
        let wrong_type_id = derive_key_id(name, &wrong_type);
        let cases = [
            ("mandate.local/audit", KeyParseError::Malformed),
            ("a+b", KeyParseError::Malformed),
            (&format!("+{id}+{key_b64}"), KeyParseError::InvalidName),
            (&format!("has space+{id}+{key_b64}"), KeyParseError::InvalidName),
            (&format!("{name}+{}+{key_b64}", &id[..7]), KeyParseError::InvalidKeyId),
            (&format!("{name}+zz{}+{key_b64}", &id[2..]), KeyParseError::InvalidKeyId),
            (&format!("{name}+00000000+{key_b64}"), KeyParseError::KeyIdMismatch),
            (&format!("other.name+{id}+{key_b64}"), KeyParseError::KeyIdMismatch),
            (&format!("{name}+{id}+{}", &key_b64[1..]), KeyParseError::InvalidBase64),
            (&format!("{name}+{id}+not*base64"), KeyParseError::InvalidBase64),
            (
                &format!("{name}+{}+{}", hex::encode(wrong_type_id), STANDARD.encode(&wrong_type)),
                KeyParseError::UnsupportedKeyType(0x02),
            ),
            (
                &format!("{name}+{}+{}", hex::encode(derive_key_id(name, &[1, 2])), STANDARD.encode([1, 2])),
                KeyParseError::InvalidKeyLength(1),
            ),
            (&format!("{name}+{}+", hex::encode(derive_key_id(name, &[]))), KeyParseError::EmptyKey),
        ];
        for (vkey, expected) in cases {
            assert_eq!(vkey.parse::<VerifierKey>().unwrap_err(), expected, "{vkey}");
        }
        assert!(good.parse::<VerifierKey>().is_ok());
    }

    #[test]
    fn verifies_the_spec_signed_note() {
        let note = example_note();
        assert_eq!(verify_signed_note(&note, &example_key()).unwrap(), EXAMPLE_TEXT);
        // Its body is not a checkpoint, so only the signature layer accepts it.
        assert_eq!(verify_note(&note, &example_key()).unwrap_err(), NoteError::CheckpointTooShort);
    }

    #[test]
    fn ignores_unknown_signers_but_needs_the_given_key() {
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let unknown = signature_line("someone.else", &other, EXAMPLE_TEXT);
        let same_name_other_key = signature_line("example.com/foo", &other, EXAMPLE_TEXT);
        let note = format!("{EXAMPLE_TEXT}\n{unknown}{same_name_other_key}{EXAMPLE_SIGNATURE_LINE}");
        assert_eq!(verify_signed_note(&note, &example_key()).unwrap(), EXAMPLE_TEXT);
        let unsigned = format!("{EXAMPLE_TEXT}\n{unknown}{same_name_other_key}");
        assert!(matches!(verify_signed_note(&unsigned, &example_key()), Err(NoteError::NotSignedByKey(_))));
    }

    #[test]
    fn rejects_tampered_or_malformed_notes() {
        let key = example_key();
        let tampered = format!("This is an example message!\n\n{EXAMPLE_SIGNATURE_LINE}");
        assert!(matches!(verify_signed_note(&tampered, &key), Err(NoteError::InvalidSignature(_))));
        let cases = [
            (example_note().trim_end().to_owned(), NoteError::MissingFinalNewline),
            (format!("{EXAMPLE_TEXT}{EXAMPLE_SIGNATURE_LINE}"), NoteError::MissingSignatureBlock),
            (format!("{EXAMPLE_TEXT}\n"), NoteError::MissingSignatureBlock),
            (format!("{EXAMPLE_TEXT}\n{EXAMPLE_SIGNATURE_LINE}\n"), NoteError::MissingSignatureBlock),
            (format!("tab\there\n\n{EXAMPLE_SIGNATURE_LINE}"), NoteError::ControlCharacter),
            (format!("{EXAMPLE_TEXT}\n- example.com/foo AAAAAAA=\n"), NoteError::MalformedSignatureLine(1)),
            (
                format!("{EXAMPLE_TEXT}\n{EXAMPLE_SIGNATURE_LINE}\u{2014} example.com/foo AAAA\n"),
                NoteError::MalformedSignatureLine(2),
            ),
            (format!("{EXAMPLE_TEXT}\n\u{2014} example.com/foo !!!!\n"), NoteError::MalformedSignatureLine(1)),
            (format!("{EXAMPLE_TEXT}\n\u{2014} example.com/foo\n"), NoteError::MalformedSignatureLine(1)),
        ];
        for (note, expected) in cases {
            assert_eq!(verify_signed_note(&note, &key).unwrap_err(), expected, "{note:?}");
        }
        let many = EXAMPLE_SIGNATURE_LINE.repeat(MAX_SIGNATURES + 1);
        assert_eq!(
            verify_signed_note(&format!("{EXAMPLE_TEXT}\n{many}"), &key).unwrap_err(),
            NoteError::TooManySignatures
        );
    }

    #[test]
    fn wrong_length_signature_from_the_key_is_invalid() {
        let key = example_key();
        let blob = [key.key_id.as_slice(), &[0u8; 63]].concat();
        let note = format!("{EXAMPLE_TEXT}\n\u{2014} example.com/foo {}\n", STANDARD.encode(blob));
        assert!(matches!(verify_signed_note(&note, &key), Err(NoteError::InvalidSignature(_))));
    }

    #[test]
    fn parses_the_spec_checkpoint_body() {
        let text = "agents.example.com/audit\n3\nNmQuc8JUCrEh46a/lUWwokmCzYMOsT080Z3jzmwCHsE=\n";
        let checkpoint = parse_checkpoint(text).unwrap();
        assert_eq!(checkpoint.origin, "agents.example.com/audit");
        assert_eq!(checkpoint.size, 3);
        assert_eq!(hex::encode(checkpoint.root), "36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1");
        let with_extension = format!("{text}some extension\n");
        assert_eq!(parse_checkpoint(&with_extension).unwrap(), checkpoint);
    }

    #[test]
    fn rejects_malformed_checkpoint_bodies() {
        let root = STANDARD.encode([0u8; 32]);
        let cases = [
            (format!("o\n1\n{root}"), NoteError::MissingFinalNewline),
            ("o\n1\n".to_owned(), NoteError::CheckpointTooShort),
            (format!("\n1\n{root}\n"), NoteError::EmptyOrigin),
            (format!("o\n01\n{root}\n"), NoteError::InvalidTreeSize("01".into())),
            (format!("o\n+1\n{root}\n"), NoteError::InvalidTreeSize("+1".into())),
            (format!("o\n\n{root}\n"), NoteError::InvalidTreeSize(String::new())),
            (format!("o\n18446744073709551616\n{root}\n"), NoteError::InvalidTreeSize("18446744073709551616".into())),
            (format!("o\n1\n{}\n", STANDARD.encode([0u8; 31])), NoteError::InvalidRoot),
            (format!("o\n1\n{}\n", root.trim_end_matches('=')), NoteError::InvalidRoot),
            (format!("o\n1\n{root}\n\nx\n"), NoteError::EmptyExtensionLine),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_checkpoint(&text).unwrap_err(), expected, "{text:?}");
        }
        assert_eq!(parse_checkpoint(&format!("o\n0\n{root}\n")).unwrap().size, 0);
    }

    #[test]
    fn verifies_a_signed_checkpoint() {
        let signer = signing_key();
        let key: VerifierKey = vkey_for("mandate.local/audit", &signer).parse().unwrap();
        let text = format!("mandate.local/audit\n5\n{}\n", STANDARD.encode([3u8; 32]));
        let note = format!("{text}\n{}", signature_line("mandate.local/audit", &signer, &text));
        let checkpoint = verify_note(&note, &key).unwrap();
        assert_eq!((checkpoint.size, checkpoint.root), (5, [3u8; 32]));
        let other: VerifierKey = vkey_for("mandate.local/audit", &SigningKey::from_bytes(&[8u8; 32])).parse().unwrap();
        assert!(matches!(verify_note(&note, &other), Err(NoteError::NotSignedByKey(_))));
    }
}
