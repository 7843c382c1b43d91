"""Interop test harness: runs a real `mandate serve` on a free loopback port with a throwaway
data directory, registers a small fixture registry through the CLI, and hands the tests a
`Mandate` object.  Everything the tests check is done with third-party libraries (PyJWT,
joserfc, jwcrypto, cryptography, requests) or plain hashlib, never with Mandate's own code.

The binary comes from $MANDATE_BIN, defaulting to target/debug/mandate of this checkout.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "mandate"

RESOURCE = "https://api.example.test"
OTHER_RESOURCE = "https://other.example.test"
OWNER = "alice"
AGENT = "bot"
AGENT_SPIFFE = "spiffe://mandate.local/agent/bot"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

STARTUP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def child_env() -> dict[str, str]:
    """The environment for `mandate` processes.  Mandate treats every unknown `MANDATE_*`
    variable as a configuration error (and would honour e.g. MANDATE_KEK or MANDATE_ISSUER from
    the caller's shell), so none of them is passed on: in particular not MANDATE_BIN."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mandate:
    """A running Mandate server plus CLI access to its data directory."""

    bin: Path
    data_dir: Path
    base_url: str
    banner: dict[str, str]
    admin_token: str
    # Every credential and token handed out during the session; the audit test asserts that
    # none of them ever reaches the audit log.
    secrets_seen: list[str] = field(default_factory=list)
    tokens_seen: list[str] = field(default_factory=list)

    # ---- CLI -------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, with_data_dir: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin)]
        if with_data_dir:
            argv += ["--data-dir", str(self.data_dir)]
        argv += list(args)
        proc = subprocess.run(
            argv, env=child_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def cli_json(self, *args: str) -> dict:
        out = self.cli(*args, "--json").stdout
        return json.loads(out)

    def create_client(self, agent: str, *extra: str) -> dict:
        made = self.cli_json("client", "create", "--agent", agent, *extra)
        if made.get("client_secret"):
            self.secrets_seen.append(made["client_secret"])
        return made

    # ---- HTTP ------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def token_endpoint(self) -> str:
        return self.url("/oauth2/token")

    def token_request(self, data: dict, auth=None, headers=None) -> requests.Response:
        body = {"grant_type": "client_credentials", "resource": RESOURCE}
        body.update({k: v for k, v in data.items()})
        body = {k: v for k, v in body.items() if v is not None}
        if "client_assertion" in body:
            self.secrets_seen.append(body["client_assertion"])
        resp = requests.post(self.token_endpoint, data=body, auth=auth, headers=headers, timeout=10)
        if resp.status_code == 200:
            self.tokens_seen.append(resp.json()["access_token"])
        return resp

    def introspect(self, token: str) -> dict:
        resp = requests.post(
            self.url("/oauth2/introspect"),
            data={"token": token},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return resp.json()

    def jwks_text(self) -> str:
        resp = requests.get(self.url("/.well-known/jwks.json"), timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.text


def _wait_for_banner(proc: subprocess.Popen, stdout_path: Path, stderr_path: Path) -> dict[str, str]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mandate serve exited early with {proc.returncode}:\n"
                f"{stdout_path.read_text()}\n{stderr_path.read_text()}"
            )
        text = stdout_path.read_text()
        if "listening on" in text and "audit key:" in text:
            banner = {"first": text.splitlines()[0]}
            for line in text.splitlines()[1:]:
                if ":" in line:
                    key, _, value = line.strip().partition(":")
                    banner[key.strip()] = value.strip()
            return banner
        time.sleep(0.05)
    raise RuntimeError(f"mandate serve printed no banner in {STARTUP_TIMEOUT_S}s:\n{stdout_path.read_text()}")


def stop_server(proc: subprocess.Popen, stderr_path: Path) -> None:
    """SIGTERM a `mandate serve` and require a clean exit within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("mandate serve did not stop within 15 s of SIGTERM")
    assert proc.returncode == 0, (
        f"mandate serve exited {proc.returncode} after SIGTERM\n{stderr_path.read_text()[-4000:]}"
    )


def _wait_healthy(base_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            resp = requests.get(base_url + "/healthz", timeout=2)
            if resp.status_code == 200 and resp.text.strip() == "ok":
                return
            last = f"{resp.status_code} {resp.text!r}"
        except requests.ConnectionError as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"/healthz never answered 200 ok: {last}")


@pytest.fixture(scope="session")
def mandate_bin() -> Path:
    path = Path(os.environ.get("MANDATE_BIN") or DEFAULT_BIN)
    if not path.is_file():
        pytest.exit(f"mandate binary not found at {path}: run `cargo build -p mandate` or set MANDATE_BIN", 2)
    return path


@contextlib.contextmanager
def running_mandate(mandate_bin: Path, root: Path, extra_args: tuple[str, ...] = (), extra_env: dict | None = None):
    """`mandate serve` on a free loopback port with its data in `root/data`; stopped cleanly on exit."""
    data_dir = root / "data"  # created by mandate itself on first start
    port = free_port()
    stdout_path, stderr_path = root / "serve.stdout", root / "serve.stderr"
    argv = [str(mandate_bin), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", *extra_args]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env={**child_env(), **(extra_env or {})}
        )
    try:
        banner = _wait_for_banner(proc, stdout_path, stderr_path)
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(base_url)
        admin_token = (data_dir / "admin-token").read_text().strip()
        assert admin_token and "\n" not in admin_token
        server = Mandate(
            bin=mandate_bin, data_dir=data_dir, base_url=base_url, banner=banner, admin_token=admin_token
        )
        server.secrets_seen.append(admin_token)
        yield server
    finally:
        stop_server(proc, stderr_path)


def mcp_resource_bin() -> Path:
    """The example MCP resource (examples/mcp-resource), built next to the mandate binary."""
    path = Path(os.environ.get("MCP_RESOURCE_BIN") or Path(os.environ.get("MANDATE_BIN") or DEFAULT_BIN).with_name("mcp-resource"))
    if not path.is_file():
        pytest.fail(f"mcp-resource binary not found at {path}: run `cargo build -p mandate-example-mcp-resource`")
    return path


@contextlib.contextmanager
def running_mcp_resource(issuer: str, root: Path, scopes: str = "notes:read notes:write"):
    """The guard-protected example MCP server on a free port; yields its resource URL (…/mcp)."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    log_path = root / f"mcp-resource-{port}.log"
    argv = [str(mcp_resource_bin()), "--listen", f"127.0.0.1:{port}", "--resource", resource, "--issuer", issuer,
            "--scopes", scopes]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while "listening on" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mcp-resource did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield resource
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mandate(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_mandate(mandate_bin, tmp_path_factory.mktemp("mandate")) as server:
        yield server


@dataclass
class Registry:
    """The fixture registry shared by most tests."""

    basic: dict  # client_secret_basic client of agent `bot`
    post: dict  # client_secret_post client of agent `bot`


@pytest.fixture(scope="session")
def registry(mandate: Mandate) -> Registry:
    mandate.cli("owner", "create", OWNER)
    mandate.cli("resource", "create", RESOURCE, "--scope", "read", "--scope", "write")
    mandate.cli("resource", "create", OTHER_RESOURCE, "--scope", "read")
    mandate.cli("agent", "create", AGENT, "--owner", OWNER, "--scope", "read")
    basic = mandate.create_client(AGENT)
    post = mandate.create_client(AGENT, "--auth", "client_secret_post")
    assert basic["token_endpoint_auth_method"] == "client_secret_basic"
    assert post["token_endpoint_auth_method"] == "client_secret_post"
    return Registry(basic=basic, post=post)


@pytest.fixture(scope="session")
def metadata(mandate: Mandate) -> dict:
    resp = requests.get(mandate.url("/.well-known/oauth-authorization-server"), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture()
def basic_token(mandate: Mandate, registry: Registry) -> str:
    """A fresh access token for `bot`, obtained with client_secret_basic."""
    resp = mandate.token_request({}, auth=(registry.basic["client_id"], registry.basic["client_secret"]))
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def new_jti() -> str:
    return str(uuid.uuid4())


# The audit test reads what every other test left in the log, so it must run last.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "run_last: run after every other test in the session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)
