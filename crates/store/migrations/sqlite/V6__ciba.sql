-- OpenID Connect CIBA (backchannel authentication) requests: an agent asks, the owner approves
-- or denies on the approval page, the agent polls the token endpoint. `req_hash` is the SHA-256
-- of the `auth_req_id` the client holds; `approval_id` names the request on the approval page
-- (useless without the owner's password). A request is spent (status `redeemed`) together with
-- the issuance of its token.
CREATE TABLE ciba_requests (
    req_hash              TEXT PRIMARY KEY,
    approval_id           TEXT NOT NULL UNIQUE,
    client_id             TEXT NOT NULL,
    owner                 TEXT NOT NULL,
    resource              TEXT NOT NULL,
    scope                 TEXT NOT NULL,
    binding_message       TEXT NOT NULL,
    authorization_details TEXT,
    status                TEXT NOT NULL,
    expires_at_ms         BIGINT NOT NULL,
    last_poll_ms          BIGINT,
    decided_at_ms         BIGINT,
    -- Wrong passwords on the approval page; the request is denied at MAX_FAILURES.
    failures              BIGINT NOT NULL DEFAULT 0,
    created_at_ms         BIGINT NOT NULL
);

CREATE INDEX ciba_requests_by_owner ON ciba_requests (owner, status);
