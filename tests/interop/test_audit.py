"""The audit log, exported after every other test has run, verified twice: by `mandate audit
verify`, and independently here with hashlib (hash chain and RFC 9162 Merkle root) and
`cryptography` (the Ed25519 signature of the C2SP checkpoint)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import jwt as pyjwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conftest import AGENT_SPIFFE

pytestmark = pytest.mark.run_last

ZERO_HASH = "0" * 64
EM_DASH = "\u2014"


# ---- an independent verifier ---------------------------------------------------------------


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def leaf_hash(entry: dict) -> bytes:
    return hashlib.sha256(b"\x00" + canonical(entry)).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over already-hashed leaves."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


@dataclass
class VerifierKey:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> "VerifierKey":
        # Split from the left: name and key id cannot contain "+", standard base64 can.
        name, key_id_hex, typed_b64 = vkey.strip().split("+", 2)
        typed = base64.b64decode(typed_b64, validate=True)
        assert typed[0] == 0x01 and len(typed) == 33, "not an Ed25519 C2SP verifier key"
        key_id = bytes.fromhex(key_id_hex)
        # C2SP signed-note: key ID = SHA-256(name || 0x0A || type || public key)[:4].
        assert hashlib.sha256(name.encode() + b"\n" + typed).digest()[:4] == key_id, "key id does not match the key"
        return cls(name, key_id, Ed25519PublicKey.from_public_bytes(typed[1:]))


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes


def verify_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    body, sep, signatures = note.partition("\n\n")
    assert sep, "checkpoint has no signature block"
    lines = body.split("\n")
    assert len(lines) == 3, f"checkpoint body must be three lines: {lines!r}"
    origin, size_text, root_b64 = lines
    signed = (body + "\n").encode("utf-8")
    assert signatures.endswith("\n")
    verified = False
    for sig_line in signatures[:-1].split("\n"):
        dash, name, blob_b64 = sig_line.split(" ")
        assert dash == EM_DASH, f"signature line must start with an em dash: {sig_line!r}"
        blob = base64.b64decode(blob_b64, validate=True)
        if name != key.name or blob[:4] != key.key_id:
            continue
        assert len(blob) == 4 + 64
        key.public.verify(blob[4:], signed)  # raises InvalidSignature
        verified = True
    assert verified, "no signature by the verifier key"
    assert origin == key.name
    root = base64.b64decode(root_b64, validate=True)
    assert len(root) == 32
    assert size_text == str(int(size_text)), "tree size is not canonical decimal"
    return Checkpoint(origin, int(size_text), root)


@dataclass
class Report:
    entries: list[dict]
    leaves: list[bytes]
    checkpoints: list[Checkpoint]
    root: bytes


def verify_export(text: str, key: VerifierKey) -> Report:
    lines = text.splitlines()
    header = json.loads(lines[0])
    assert header == {"log": {"format": "mandate-audit/v1", "origin": key.name}}
    entries: list[dict] = []
    leaves: list[bytes] = []
    checkpoints: list[Checkpoint] = []
    prev = ZERO_HASH
    for number, line in enumerate(lines[1:], start=2):
        obj = json.loads(line)
        assert len(obj) == 1, f"line {number}: {line[:80]}"
        if "entry" in obj:
            entry = obj["entry"]
            assert entry["seq"] == len(entries), f"line {number}: seq {entry['seq']} != {len(entries)}"
            assert entry["prev"] == prev, f"line {number} (seq {entry['seq']}): prev does not chain"
            leaf = leaf_hash(entry)
            prev = leaf.hex()
            entries.append(entry)
            leaves.append(leaf)
        else:
            cp = verify_checkpoint(obj["checkpoint"], key)
            assert cp.size <= len(entries), f"line {number}: checkpoint covers entries not yet seen"
            assert cp.root == merkle_root(leaves[: cp.size]), f"line {number}: root mismatch at size {cp.size}"
            checkpoints.append(cp)
    assert checkpoints, "export has no checkpoint"
    last = checkpoints[-1]
    assert json.loads(lines[-1]).keys() == {"checkpoint"}, "export must end with a checkpoint"
    assert last.size == len(entries), "final checkpoint does not cover every entry"
    return Report(entries, leaves, checkpoints, merkle_root(leaves))


# ---- known-answer checks of the verifier itself ---------------------------------------------


def test_merkle_root_matches_rfc9162_definition_by_hand():
    leaves = [hashlib.sha256(b"\x00" + bytes([i])).digest() for i in range(5)]
    h = lambda a, b: hashlib.sha256(b"\x01" + a + b).digest()  # noqa: E731
    # n=5: k=4 -> (((0,1),(2,3)),4)
    assert merkle_root(leaves) == h(h(h(leaves[0], leaves[1]), h(leaves[2], leaves[3])), leaves[4])
    assert merkle_root(leaves[:3]) == h(h(leaves[0], leaves[1]), leaves[2])
    assert merkle_root(leaves[:1]) == leaves[0]
    assert merkle_root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ---- the real log --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(mandate, tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    mandate.cli("audit", "export", "--out", str(path))
    return path


@pytest.fixture(scope="module")
def vkey(mandate) -> str:
    key = mandate.cli("audit", "key").stdout.strip()
    assert key == mandate.banner["audit key"], "`audit key` disagrees with the server's banner"
    return key


def test_mandate_audit_verify_says_ok(mandate, export, vkey):
    proc = mandate.cli("audit", "verify", str(export), "--key", vkey, with_data_dir=False, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries = sum(1 for line in export.read_text().splitlines() if line.startswith('{"entry"'))
    assert proc.stdout.startswith(f"OK: {entries} entries, "), proc.stdout


def test_independent_verification(mandate, export, vkey):
    report = verify_export(export.read_text(encoding="utf-8"), VerifierKey.parse(vkey))
    # The final checkpoint's root is the RFC 9162 root we computed over every leaf.
    assert report.checkpoints[-1].root == report.root
    assert report.checkpoints[-1].size == len(report.entries)
    # This session did far more than a handful of things.
    assert len(report.entries) > 50

    actions = [(e["action"], e["decision"], e.get("reason")) for e in report.entries]
    assert ("registry.agent.create", "allow", None) in actions
    # The session's refusals are on record with the OAuth error code.
    denied_clients = {e["client"] for e in report.entries if e["action"] == "token.issue" and e["reason"] == "invalid_client"}
    assert {"interop-ed25519", "interop-p256"} <= denied_clients
    issued = [e for e in report.entries if e["action"] == "token.issue" and e["decision"] == "allow"]
    assert issued and all(e["jti"] for e in issued)
    # Every issuance is bound to someone: an agent of this trust domain, or (for an application a
    # person signed in to) that person as owner.
    assert all((e["agent"] or "").startswith("spiffe://mandate.local/agent/") or e["owner"] for e in issued)
    assert any(e["agent"] == AGENT_SPIFFE and e["owner"] == "alice" for e in issued)
    kills = [e for e in report.entries if e["action"] == "revoke.agent" and e["decision"] == "allow"]
    # test_kill_switch's bot2, and console-bot from the console in Chromium (test_browser_console).
    assert sorted(e["agent"] for e in kills) == [
        "spiffe://mandate.local/agent/bot2",
        "spiffe://mandate.local/agent/console-bot",
    ]

    # Every token this session received is in the log by jti.
    logged_jtis = {e["jti"] for e in issued}
    for token in mandate.tokens_seen:
        assert pyjwt.decode(token, options={"verify_signature": False})["jti"] in logged_jtis


def test_no_secret_or_token_in_the_export(mandate, export):
    text = export.read_text(encoding="utf-8")
    assert mandate.tokens_seen, "the session issued no tokens?"
    assert len(mandate.secrets_seen) >= 3
    for token in mandate.tokens_seen:
        assert token not in text
        assert token.rsplit(".", 1)[1] not in text, "a token signature is in the audit log"
    for secret in mandate.secrets_seen:  # client secrets, client assertions, the admin token
        assert secret not in text


def test_tampering_is_detected_by_both_verifiers(mandate, export, vkey, tmp_path):
    lines = export.read_text(encoding="utf-8").splitlines()
    target = next(i for i, line in enumerate(lines) if '"action":"token.issue"' in line and '"decision":"allow"' in line)
    entry = json.loads(lines[target])
    entry["entry"]["scope"] = "read write admin"
    tampered_lines = lines[:target] + [json.dumps(entry)] + lines[target + 1 :]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(tampered_lines) + "\n", encoding="utf-8")

    proc = mandate.cli("audit", "verify", str(tampered), "--key", vkey, with_data_dir=False, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("FAIL: "), proc.stdout
    with pytest.raises(AssertionError, match="prev does not chain"):
        verify_export(tampered.read_text(encoding="utf-8"), VerifierKey.parse(vkey))

    # Dropping the last entry (and the last checkpoint) leaves an earlier checkpoint unmatched or
    # the tail uncovered; either way both verifiers must refuse.
    entry_lines = [i for i, line in enumerate(lines) if line.startswith('{"entry"')]
    truncated = [line for i, line in enumerate(lines) if i != entry_lines[-1]]
    cut = tmp_path / "truncated.jsonl"
    cut.write_text("\n".join(truncated) + "\n", encoding="utf-8")
    proc = mandate.cli("audit", "verify", str(cut), "--key", vkey, with_data_dir=False, check=False)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL: "), proc.stdout
    with pytest.raises(AssertionError):
        verify_export(cut.read_text(encoding="utf-8"), VerifierKey.parse(vkey))


def test_a_different_key_does_not_verify(mandate, export, vkey):
    name, key_id, _ = vkey.split("+", 2)
    pub = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    typed_other = b"\x01" + pub
    kid_other = hashlib.sha256(name.encode() + b"\n" + typed_other).digest()[:4].hex()
    wrong = f"{name}+{kid_other}+{base64.b64encode(typed_other).decode()}"
    proc = mandate.cli("audit", "verify", str(export), "--key", wrong, with_data_dir=False, check=False)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL: "), proc.stdout
    with pytest.raises(AssertionError, match="no signature by the verifier key"):
        verify_export(export.read_text(encoding="utf-8"), VerifierKey.parse(wrong))
    # Same key id, forged key: the signature itself must fail.
    forged = VerifierKey(name, bytes.fromhex(key_id), Ed25519PublicKey.from_public_bytes(pub))
    with pytest.raises(InvalidSignature):
        verify_export(export.read_text(encoding="utf-8"), forged)
