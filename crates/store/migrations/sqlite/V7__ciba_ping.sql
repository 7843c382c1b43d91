-- CIBA ping mode (CIBA Core 1.0 §10.2): when the owner decides a ping client's request, Mandate
-- POSTs {"auth_req_id"} to the client's notification endpoint with the client's
-- `client_notification_token` as a Bearer credential. Both secrets are kept only until the
-- callback is delivered or given up, sealed under the KEK (AES-256-GCM, base64 text) and bound
-- to the request's `req_hash`. `notify_next_ms` is set when a callback is due (NULL otherwise).
ALTER TABLE ciba_requests ADD COLUMN notify_endpoint TEXT;
ALTER TABLE ciba_requests ADD COLUMN notify_sealed TEXT;
ALTER TABLE ciba_requests ADD COLUMN notify_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ciba_requests ADD COLUMN notify_next_ms BIGINT;

CREATE INDEX ciba_requests_notify_due ON ciba_requests (notify_next_ms) WHERE notify_next_ms IS NOT NULL;
