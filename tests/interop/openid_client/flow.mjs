// openid-client (panva) against Mandate: OIDC discovery, authorization code + PKCE with the
// RFC 9207 `iss` check, ID token validation, DPoP-bound tokens used at a guard-protected MCP
// resource, and refresh. The consent page is driven headlessly with fetch. Prints one JSON
// object with what happened; the pytest driver asserts on it.
import * as client from 'openid-client'

const [issuer, clientId, redirectUri, resource, mcpUrl, owner, password] = process.argv.slice(2)

function formFields(html) {
  const fields = {}
  for (const input of html.matchAll(/<input\b[^>]*>/g)) {
    const name = /\bname="([^"]*)"/.exec(input[0])
    const value = /\bvalue="([^"]*)"/.exec(input[0])
    if (name && value) fields[name[1]] = value[1].replaceAll('&amp;', '&').replaceAll('&quot;', '"')
  }
  return fields
}

// Sign in and approve on Mandate's own pages; returns the redirect URL carrying the code.
async function consent(authorizationUrl) {
  let response = await fetch(authorizationUrl, { redirect: 'manual' })
  if (response.status !== 200) throw new Error(`authorize answered ${response.status}`)
  const cookie = (response.headers.get('set-cookie') || '').split(';')[0]
  let page = await response.text()
  const decide = async (fields, cookieHeader) => {
    const headers = { 'content-type': 'application/x-www-form-urlencoded' }
    if (cookieHeader) headers.cookie = cookieHeader
    return fetch(new URL('/oauth2/authorize/decision', issuer), {
      method: 'POST', redirect: 'manual', headers, body: new URLSearchParams(fields),
    })
  }
  response = await decide({ ...formFields(page), owner, password, decision: 'login' }, cookie)
  const session = (response.headers.get('set-cookie') || cookie).split(';')[0]
  if (response.status === 200) {
    page = await response.text()
    response = await decide({ ...formFields(page), decision: 'approve' }, session)
  }
  if (response.status !== 303 && response.status !== 302) {
    throw new Error(`decision answered ${response.status}: ${await response.text()}`)
  }
  return new URL(response.headers.get('location'))
}

const config = await client.discovery(
  new URL(issuer), clientId, { id_token_signed_response_alg: 'EdDSA' }, client.None(),
  { execute: [client.allowInsecureRequests] },
)
const dpop = client.getDPoPHandle(config, await client.randomDPoPKeyPair('ES256'))
const verifier = client.randomPKCECodeVerifier()
const state = client.randomState()
const nonce = client.randomNonce()
const authorizationUrl = client.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: 'openid notes:read',
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state, nonce, resource,
})
const callback = await consent(authorizationUrl)
const result = { callback_has_iss: callback.searchParams.get('iss') === issuer }

// RFC 9207: a response claiming another issuer must be refused by the client before redemption.
const forged = new URL(callback)
forged.searchParams.set('iss', 'https://attacker.example')
try {
  await client.authorizationCodeGrant(config, forged, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce })
  result.forged_iss_error = null
} catch (e) {
  result.forged_iss_error = e.code || e.message
}

const tokens = await client.authorizationCodeGrant(
  config, callback, { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true },
  { resource }, { DPoP: dpop },
)
result.token_type = tokens.token_type
result.access_token = tokens.access_token
result.id_token_claims = tokens.claims()
result.has_refresh_token = typeof tokens.refresh_token === 'string'

const initialize = JSON.stringify({
  jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'openid-client-interop', version: '1' } },
})
const mcpHeaders = () => new Headers({ 'content-type': 'application/json', accept: 'application/json, text/event-stream' })
let rs = await client.fetchProtectedResource(config, tokens.access_token, new URL(mcpUrl), 'POST', initialize, mcpHeaders(), { DPoP: dpop })
result.rs_dpop_status = rs.status
result.rs_dpop_body = await rs.json()
// The same DPoP-bound token presented as a plain bearer token must be refused; openid-client
// reports the refusal as a WWW-Authenticate challenge error carrying the response.
try {
  rs = await client.fetchProtectedResource(config, tokens.access_token, new URL(mcpUrl), 'POST', initialize, mcpHeaders())
  result.rs_bearer_status = rs.status
} catch (e) {
  if (!e.response) throw e
  result.rs_bearer_status = e.response.status
  result.rs_bearer_challenge = e.response.headers.get('www-authenticate')
  result.rs_bearer_parsed = (e.cause || []).map((c) => ({ scheme: c.scheme, error: c.parameters?.error }))
}

const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, { resource }, { DPoP: dpop })
result.refreshed_token_type = refreshed.token_type
result.refreshed_access_token = refreshed.access_token
result.rotated = refreshed.refresh_token !== tokens.refresh_token
rs = await client.fetchProtectedResource(config, refreshed.access_token, new URL(mcpUrl), 'POST', initialize, mcpHeaders(), { DPoP: dpop })
result.rs_refreshed_status = rs.status

console.log(JSON.stringify(result))
