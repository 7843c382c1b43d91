// Baseline for bench/token-throughput: oidc-provider issuing RFC 9068-style
// EdDSA-signed JWT access tokens for the OAuth 2.0 client_credentials grant,
// selected via RFC 8707 resource indicators.
//
// Env: PORT (required), HOST (default 127.0.0.1),
//      BENCH_CLIENT_ID (default "bench"), BENCH_CLIENT_SECRET (default "secret"),
//      BENCH_RESOURCE (default "https://api.bench.test").
// Run with NODE_ENV=production. One node process, as oidc-provider is
// normally deployed (no cluster module).
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const PORT = Number.parseInt(process.env.PORT ?? '', 10);
if (!Number.isInteger(PORT) || PORT <= 0) {
  console.error('server.mjs: set PORT to a free TCP port');
  process.exit(2);
}
const HOST = process.env.HOST ?? '127.0.0.1';
const CLIENT_ID = process.env.BENCH_CLIENT_ID ?? 'bench';
const CLIENT_SECRET = process.env.BENCH_CLIENT_SECRET ?? 'secret';
const RESOURCE = process.env.BENCH_RESOURCE ?? 'https://api.bench.test';
const SCOPE = 'read';

// Fresh Ed25519 signing key per start, exported as a private JWK with a kid.
const { privateKey } = generateKeyPairSync('ed25519');
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `bench-ed25519-${randomBytes(4).toString('hex')}`,
  alg: 'EdDSA',
  use: 'sig',
};

const resourceServer = {
  scope: SCOPE,
  audience: RESOURCE,
  accessTokenTTL: 300,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'EdDSA' } },
};

const configuration = {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: SCOPE,
    },
  ],
  jwks: { keys: [signingJwk] },
  // Only the token endpoint is exercised; keep ID tokens etc. on EdDSA too so
  // the keystore only needs the one key.
  enabledJWA: {
    idTokenSigningAlgValues: ['EdDSA'],
  },
  clientDefaults: {
    id_token_signed_response_alg: 'EdDSA',
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: [SCOPE],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator === RESOURCE) return resourceServer;
        // Unknown resource -> invalid_target
        const { errors } = Provider;
        throw new errors.InvalidTarget();
      },
    },
  },
  ttl: {
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
  },
};

const issuer = `http://${HOST}:${PORT}`;
const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => {
  console.error('server_error', err);
});

const server = provider.listen(PORT, HOST, () => {
  console.log(`oidc-provider listening on ${issuer} (token endpoint ${issuer}/token, pid ${process.pid})`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
