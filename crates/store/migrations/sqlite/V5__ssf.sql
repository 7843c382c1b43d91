-- Shared Signals Framework transmitter: receivers' streams and the outbox of security event
-- tokens not yet delivered (push) or acknowledged (poll). Events are written in the same
-- transaction as the revocation they report, so they survive restarts.
CREATE TABLE ssf_streams (
    stream_id     TEXT PRIMARY KEY,
    -- The client that created the stream (NULL when created with the admin credential).
    client_id     TEXT,
    config        TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE ssf_events (
    stream_id       TEXT NOT NULL REFERENCES ssf_streams (stream_id) ON DELETE CASCADE,
    jti             TEXT NOT NULL,
    -- The SET claims; signed (and given the issuer's `iss`) by the server that delivers them.
    claims          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    PRIMARY KEY (stream_id, jti)
);

CREATE INDEX ssf_events_by_time ON ssf_events (stream_id, created_at_ms);

-- OpenID Connect Back-Channel Logout tokens waiting for delivery to a client's
-- `backchannel_logout_uri`; claims are signed at delivery, like the SETs above.
CREATE TABLE logout_outbox (
    jti             TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    endpoint_url    TEXT NOT NULL,
    claims          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL
);

CREATE INDEX logout_outbox_by_time ON logout_outbox (created_at_ms);
