ALTER TABLE owners ADD COLUMN password_hash TEXT;
ALTER TABLE agents ADD COLUMN may_impersonate INTEGER NOT NULL DEFAULT 0;
-- Clients may now exist without an agent (applications a person signs in to), so the table is
-- rebuilt: SQLite cannot drop a NOT NULL constraint in place.
CREATE TABLE clients_v3 (
    client_id TEXT PRIMARY KEY,
    agent TEXT REFERENCES agents(name),
    auth_method TEXT NOT NULL,
    secret_hash TEXT,
    jwks TEXT,
    can_introspect INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    redirect_uris TEXT NOT NULL DEFAULT '[]',
    grant_types TEXT NOT NULL DEFAULT '[]',
    client_name TEXT,
    metadata TEXT
);
INSERT INTO clients_v3 (client_id, agent, auth_method, secret_hash, jwks, can_introspect, created_at_ms, grant_types)
    SELECT client_id, agent, auth_method, secret_hash, jwks, can_introspect, created_at_ms,
           '["client_credentials","urn:ietf:params:oauth:grant-type:jwt-bearer","urn:ietf:params:oauth:grant-type:token-exchange"]'
    FROM clients;
DROP TABLE clients;
ALTER TABLE clients_v3 RENAME TO clients;
CREATE INDEX clients_agent ON clients(agent);
CREATE TABLE consents (
    owner TEXT NOT NULL REFERENCES owners(name) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (owner, client_id, resource)
);
CREATE TABLE auth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    grant_json TEXT NOT NULL,
    issued_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE trusted_idps (
    name TEXT PRIMARY KEY,
    issuer TEXT NOT NULL UNIQUE,
    jwks_url TEXT,
    jwks TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE delegation_targets (
    agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
    audience TEXT NOT NULL,
    resource TEXT NOT NULL,
    scopes TEXT NOT NULL,
    remote_client_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, audience, resource)
);
