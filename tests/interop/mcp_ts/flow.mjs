// The MCP TypeScript SDK's OAuth client against Mandate and the guard-protected example MCP
// server: Protected Resource Metadata discovery from the 401, AS metadata, client identification
// by Client ID Metadata Document (`cimd`) or dynamic registration (`dcr`), the PKCE code flow
// (Mandate's sign-in and consent pages driven headlessly with fetch), tools over Streamable HTTP,
// and a refresh forced through the SDK. Prints one JSON object; the pytest driver asserts on it.
//
//   node flow.mjs <mcp url> <owner> <password> <redirect uri> cimd|dcr [client metadata url]
import { auth, extractWWWAuthenticateParams, refreshAuthorization } from '@modelcontextprotocol/sdk/client/auth.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

const [mcpUrl, owner, password, redirectUri, mode, clientMetadataUrl] = process.argv.slice(2)

// An in-memory OAuthClientProvider whose "browser" signs in and approves on Mandate's pages.
class HeadlessProvider {
  constructor () {
    this.saved = { client: undefined, tokens: undefined, verifier: undefined, discovery: undefined }
    this.callback = undefined
    if (mode === 'cimd') this.clientMetadataUrl = clientMetadataUrl
  }

  get redirectUrl () { return redirectUri }
  get clientMetadata () {
    return {
      client_name: 'MCP TypeScript SDK interop',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      application_type: 'native',
    }
  }

  state () { return 'st-' + Math.random().toString(36).slice(2) }
  clientInformation () { return this.saved.client }
  saveClientInformation (info) { this.saved.client = info }
  tokens () { return this.saved.tokens }
  saveTokens (tokens) { this.saved.tokens = tokens }
  saveCodeVerifier (verifier) { this.saved.verifier = verifier }
  codeVerifier () { return this.saved.verifier }
  saveDiscoveryState (state) { this.saved.discovery = state }
  discoveryState () { return this.saved.discovery }
  async redirectToAuthorization (url) {
    this.authorizationUrl = url
    this.callback = await consent(url)
  }
}

function formFields (html) {
  const fields = {}
  for (const input of html.matchAll(/<input\b[^>]*>/g)) {
    const name = /\bname="([^"]*)"/.exec(input[0])
    const value = /\bvalue="([^"]*)"/.exec(input[0])
    if (name && value) fields[name[1]] = value[1].replaceAll('&amp;', '&').replaceAll('&quot;', '"')
  }
  return fields
}

function formAction (html, base) {
  const action = /<form\b[^>]*\baction="([^"]*)"/.exec(html)
  return new URL(action ? action[1].replaceAll('&amp;', '&') : '/oauth2/authorize/decision', base)
}

function cookieOf (response, fallback) {
  const set = response.headers.get('set-cookie')
  return set ? set.split(';')[0] : fallback
}

// GET the authorization URL, sign in, approve; returns the redirect carrying code and iss.
async function consent (authorizationUrl) {
  let response = await fetch(authorizationUrl, { redirect: 'manual' })
  if (response.status !== 200) throw new Error(`authorize answered ${response.status}: ${await response.text()}`)
  let cookie = cookieOf(response, '')
  let page = await response.text()
  const post = async (fields) => {
    const headers = { 'content-type': 'application/x-www-form-urlencoded' }
    if (cookie) headers.cookie = cookie
    return fetch(formAction(page, authorizationUrl), {
      method: 'POST', redirect: 'manual', headers, body: new URLSearchParams(fields),
    })
  }
  response = await post({ ...formFields(page), owner, password, decision: 'login' })
  cookie = cookieOf(response, cookie)
  if (response.status === 200) {
    page = await response.text()
    response = await post({ ...formFields(page), decision: 'approve' })
  }
  if (response.status !== 303 && response.status !== 302) {
    throw new Error(`decision answered ${response.status}: ${await response.text()}`)
  }
  return new URL(response.headers.get('location'))
}

const result = { mode }
const provider = new HeadlessProvider()

// 1. An unauthenticated MCP request: 401 with the RFC 9728 pointer and the scope to ask for.
const initialize = JSON.stringify({
  jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'probe', version: '1' } },
})
const probe = await fetch(mcpUrl, {
  method: 'POST', body: initialize,
  headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
})
const challenge = extractWWWAuthenticateParams(probe)
result.challenge_status = probe.status
result.resource_metadata_url = challenge.resourceMetadataUrl?.href ?? null
result.challenge_scope = challenge.scope ?? null

// 2. auth(): PRM, AS metadata, registration (CIMD or DCR), then the authorization redirect.
result.first_auth = await auth(provider, {
  serverUrl: mcpUrl, resourceMetadataUrl: challenge.resourceMetadataUrl, scope: challenge.scope,
})
const discovery = provider.saved.discovery
result.issuer = discovery.authorizationServerUrl
result.as_metadata = {
  client_id_metadata_document_supported: discovery.authorizationServerMetadata.client_id_metadata_document_supported,
  registration_endpoint: discovery.authorizationServerMetadata.registration_endpoint ?? null,
}
result.prm_resource = discovery.resourceMetadata?.resource ?? null
result.client_id = provider.saved.client.client_id
result.authorization_request = Object.fromEntries(provider.authorizationUrl.searchParams)
const callback = provider.callback
result.callback_iss = callback.searchParams.get('iss')
result.callback_state_matches = callback.searchParams.get('state') === result.authorization_request.state
// MCP (RFC 9207): the client compares iss with the issuer it discovered before redeeming.
if (result.callback_iss !== String(discovery.authorizationServerMetadata.issuer)) {
  throw new Error(`iss ${result.callback_iss} is not the discovered issuer`)
}

// 3. auth() again with the code: the token request.
result.second_auth = await auth(provider, {
  serverUrl: mcpUrl, authorizationCode: callback.searchParams.get('code'),
  resourceMetadataUrl: challenge.resourceMetadataUrl, scope: challenge.scope,
})
const first = provider.saved.tokens
result.access_token = first.access_token
result.token_type = first.token_type
result.has_refresh_token = typeof first.refresh_token === 'string'

// 4. The SDK's MCP client with the provider: tools/list and tools/call whoami.
async function session () {
  const client = new Client({ name: 'mandate-interop', version: '1.0.0' })
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider })
  await client.connect(transport)
  const tools = await client.listTools()
  const whoami = await client.callTool({ name: 'whoami', arguments: {} })
  await client.close()
  return { tools: tools.tools.map((t) => t.name), whoami: JSON.parse(whoami.content[0].text) }
}
const before = await session()
result.tools = before.tools
result.whoami = before.whoami

// 5. A refresh forced through the SDK: auth() with a stored refresh token refreshes.
result.refresh_auth = await auth(provider, {
  serverUrl: mcpUrl, resourceMetadataUrl: challenge.resourceMetadataUrl, scope: challenge.scope,
})
const refreshed = provider.saved.tokens
result.refreshed_access_token = refreshed.access_token
result.access_token_changed = refreshed.access_token !== first.access_token
result.refresh_token_rotated = refreshed.refresh_token !== first.refresh_token
const after = await session()
result.whoami_after_refresh = after.whoami

// The rotated-out refresh token must not work again.
try {
  await refreshAuthorization(discovery.authorizationServerUrl, {
    metadata: discovery.authorizationServerMetadata,
    clientInformation: provider.saved.client,
    refreshToken: first.refresh_token,
    resource: result.prm_resource,
  })
  result.old_refresh_error = null
} catch (e) {
  result.old_refresh_error = e.errorCode || e.constructor.name || String(e)
}

console.log(JSON.stringify(result))
