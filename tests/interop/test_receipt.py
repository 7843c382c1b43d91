"""A receipt written by `mandate audit receipt`, checked independently: the leaf hash and the RFC
9162 inclusion proof with hashlib, the checkpoint signature with `cryptography` (via the
verifier in test_audit.py), and the canonical-bytes rule that makes any changed byte fail."""

from __future__ import annotations

import hashlib
import json

import pytest

from test_audit import VerifierKey, canonical, leaf_hash, merkle_root, verify_checkpoint


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: walk the audit path from the leaf to the root."""
    assert 0 <= index < size, "index outside the tree"
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn != 0, "audit path longer than the tree is deep"
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    assert sn == 0, "audit path shorter than the tree is deep"
    return r


def verify_receipt(data: bytes, key: VerifierKey) -> dict:
    receipt = json.loads(data)
    assert data == canonical(receipt) + b"\n", "receipt is not in canonical form"
    assert set(receipt) == {"format", "origin", "entry", "index", "tree_size", "inclusion", "checkpoint"}
    assert receipt["format"] == "mandate-audit-receipt/v1"
    assert receipt["origin"] == key.name
    checkpoint = verify_checkpoint(receipt["checkpoint"], key)
    assert checkpoint.size == receipt["tree_size"], "checkpoint signs another tree size"
    assert receipt["entry"]["seq"] == receipt["index"]
    path = [bytes.fromhex(h) for h in receipt["inclusion"]]
    root = root_from_inclusion(receipt["index"], receipt["tree_size"], leaf_hash(receipt["entry"]), path)
    assert root == checkpoint.root, "inclusion proof does not lead to the signed root"
    return receipt


# ---- known-answer check of the path walker -------------------------------------------------


def audit_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]), recursively as the RFC states it."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return audit_path(m, leaves[:k]) + [merkle_root(leaves[k:])]
    return audit_path(m - k, leaves[k:]) + [merkle_root(leaves[:k])]


def test_inclusion_walk_matches_the_rfc_path_for_every_position():
    leaves = [hashlib.sha256(b"\x00" + bytes([i])).digest() for i in range(13)]
    for size in range(1, len(leaves) + 1):
        tree = leaves[:size]
        for index in range(size):
            path = audit_path(index, tree)
            assert root_from_inclusion(index, size, tree[index], path) == merkle_root(tree)
            if path:
                with pytest.raises(AssertionError):
                    root_from_inclusion(index, size, tree[index], path[:-1])


# ---- a real receipt ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vkey(mandate) -> VerifierKey:
    return VerifierKey.parse(mandate.cli("audit", "key").stdout.strip())


@pytest.fixture(scope="module")
def receipt_file(mandate, tmp_path_factory):
    # The last of the first few events, so the proof has siblings on both sides.
    lines = mandate.cli("--json", "audit", "query", "--since", "1970-01-01T00:00:00Z", "--limit", "5").stdout
    event = json.loads(lines.splitlines()[-1])
    path = tmp_path_factory.mktemp("receipt") / "receipt.json"
    mandate.cli("audit", "receipt", str(event["seq"]), "--out", str(path))
    return path


def test_a_receipt_verifies_with_hashlib_and_cryptography(mandate, receipt_file, vkey):
    receipt = verify_receipt(receipt_file.read_bytes(), vkey)
    assert receipt["index"] == receipt["entry"]["seq"] and receipt["tree_size"] > receipt["index"]
    proc = mandate.cli("audit", "verify-receipt", str(receipt_file), "--key", vkey_text(mandate), with_data_dir=False)
    assert proc.stdout.startswith("OK: "), proc.stdout


def vkey_text(mandate) -> str:
    return mandate.cli("audit", "key").stdout.strip()


def test_a_changed_receipt_fails_both_verifiers(mandate, receipt_file, vkey, tmp_path):
    data = receipt_file.read_bytes()
    changes = {
        "action": data.replace(b'"action":"', b'"action":"x', 1),
        "whitespace": data.replace(b",", b", ", 1),
        "tree size": data.replace(b'"tree_size":', b'"tree_size":1', 1),
    }
    for what, changed in changes.items():
        assert changed != data, what
        with pytest.raises(AssertionError):
            verify_receipt(changed, vkey)
        path = tmp_path / "changed.json"
        path.write_bytes(changed)
        proc = mandate.cli("audit", "verify-receipt", str(path), "--key", vkey_text(mandate), with_data_dir=False, check=False)
        assert proc.returncode == 1 and proc.stdout.startswith("FAIL: "), f"{what}: {proc.stdout}"
