CREATE TABLE owners (
    name TEXT PRIMARY KEY,
    display_name TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES owners(name),
    spiffe_id TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX agents_owner ON agents(owner);
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL REFERENCES agents(name),
    auth_method TEXT NOT NULL,
    secret_hash TEXT,
    jwks TEXT,
    can_introspect BOOLEAN NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX clients_agent ON clients(agent);
CREATE TABLE resources (
    uri TEXT PRIMARY KEY,
    scopes TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE revocation_epochs (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE used_once (
    id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    alg TEXT NOT NULL,
    sealed BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    activate_at_ms BIGINT NOT NULL,
    retire_at_ms BIGINT
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    leaf_hash BYTEA NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    frontier TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
