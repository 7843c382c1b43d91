// openid-client (panva) as a CIBA client of Mandate (poll mode): discovery, backchannel
// authentication with a binding message and RFC 9396 authorization_details, polling while the
// owner approves on Mandate's page (found with `mandate ciba pending`), ID token validation.
// Prints one JSON object with what happened; the pytest driver asserts on it.
import { execFileSync } from 'node:child_process'
import * as client from 'openid-client'

const [issuer, clientId, secret, resource, owner, password, mandateBin, dataDir] = process.argv.slice(2)
const message = 'Delete row 7 of the customer table'

const config = await client.discovery(
  new URL(issuer), clientId, { id_token_signed_response_alg: 'EdDSA' }, client.ClientSecretBasic(secret),
  { execute: [client.allowInsecureRequests] },
)
const details = JSON.stringify([{ type: 'db_action', actions: ['delete'], locations: [resource] }])
const started = await client.initiateBackchannelAuthentication(config, {
  scope: 'openid write', login_hint: owner, binding_message: message, resource, authorization_details: details,
})
// Polls every `interval` seconds until the owner decides.
const polling = client.pollBackchannelAuthenticationGrant(config, started)

// The owner, out of band: finds the request and approves it on Mandate's page.
const pending = JSON.parse(
  execFileSync(mandateBin, ['--data-dir', dataDir, '--json', 'ciba', 'pending', owner], { encoding: 'utf8' }),
)
const row = pending.find((r) => r.binding_message === message)
const approval = await fetch(new URL(`/oauth2/ciba/approve/${row.approval_id}`, issuer), {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ owner, password, decision: 'approve' }),
})

const tokens = await polling
console.log(JSON.stringify({
  interval: started.interval,
  expires_in: started.expires_in,
  auth_req_id: started.auth_req_id,
  approve_status: approval.status,
  token_type: tokens.token_type,
  access_token: tokens.access_token,
  has_refresh_token: typeof tokens.refresh_token === 'string',
  id_token_claims: tokens.claims(),
  details,
}))
