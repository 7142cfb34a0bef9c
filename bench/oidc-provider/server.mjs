// panva's oidc-provider, configured as the reference for bench/load.sh: the client_credentials
// grant, static confidential clients (client_secret_basic), introspection and revocation, access
// tokens signed with RS256 (a fresh 2048-bit RSA key per start, like AgentIdP's default), or with
// ES256 (P-256) or EdDSA (Ed25519) when --alg says so, to compare at AgentIdP's other algorithms.
//
//   node server.mjs --port 3901 --clients FILE [--alg RS256|ES256|EdDSA] [--pkjwt-client FILE]
//
// FILE holds the static clients, one `client_id:client_secret` a line (bench/load.sh gives it the
// same ids and secrets it created on AgentIdP, so both servers get identical requests).
// --pkjwt-client names a JSON file `{"client_id": ..., "jwks": {"keys": [public JWK]}}`: one more
// static client, authenticating with private_key_jwt (RFC 7523) and ES256 assertions, the same
// client id and public key as the private_key_jwt credential load.sh made on AgentIdP (its
// token-pkjwt scenario). oidc-provider accepts an assertion whose aud is its issuer or token
// endpoint, and refuses a jti it has seen, through its ReplayDetection model: with the default
// in-memory adapter, an LRU cache of 1,000 entries shared with every other model, so it remembers
// only recent jtis, where AgentIdP stores each until its assertion expires.
//
// DPoP (RFC 9449, features.dPoP) is on, without nonces (AgentIdP's default too), for load.sh's
// token-dpop scenario: a token request with a `DPoP` proof (ES256 or EdDSA, oidc-provider's
// default algorithms) gets `token_type: DPoP` and a JWT access token carrying cnf.jkt. The proof's
// htu must be this server's token endpoint (http://HOST:PORT/token) and its iat within 300 s of
// now either way (validate_dpop.js's DPOP_OK_WINDOW, fixed; clockTolerance does not apply to it);
// its jti is refused when seen before for the same client, through the same ReplayDetection model
// as assertions (so, like theirs, remembered only while it stays in the LRU cache). A request
// without the header costs a header lookup more than with the feature off, as on AgentIdP, which
// always looks for one.
//
// Two resource servers, because oidc-provider does not store JWT access tokens and so can only
// introspect opaque ones:
//   urn:agentidp-bench:jwt     (the default) JWT access tokens (RFC 9068 `at+jwt`): what
//                              the token endpoint comparison measures;
//   urn:agentidp-bench:opaque  opaque tokens kept in the in-memory adapter: what introspection
//                              looks up;
// and a third, https://bench.example.com/mcp, JWTs audienced to it with its scope `bench:call`:
// the resource-bound tokens (RFC 8707) of the token-resource scenario.
// Nothing is durable (the default in-memory adapter) and client secrets are compared in plain
// text: that is oidc-provider's behaviour for a static client, not a shortcut of this file.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '3901' },
    host: { type: 'string', default: '127.0.0.1' },
    clients: { type: 'string' },
    alg: { type: 'string', default: 'RS256' },
    'pkjwt-client': { type: 'string' },
  },
});
if (!values.clients) {
  console.error('usage: node server.mjs [--port N] [--host ADDR] --clients FILE [--alg ALG] [--pkjwt-client FILE]');
  process.exit(2);
}

const port = Number(values.port);
const issuer = `http://${values.host}:${port}`;

const keyTypes = {
  RS256: ['rsa', { modulusLength: 2048 }],
  ES256: ['ec', { namedCurve: 'P-256' }],
  EdDSA: ['ed25519', {}],
};
if (!keyTypes[values.alg]) {
  console.error(`--alg must be one of ${Object.keys(keyTypes).join(', ')}`);
  process.exit(2);
}
const alg = values.alg;
const { privateKey } = generateKeyPairSync(...keyTypes[alg]);
const jwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `bench-${randomBytes(4).toString('hex')}`,
  alg,
  use: 'sig',
};

const JWT_RESOURCE = 'urn:agentidp-bench:jwt';
const OPAQUE_RESOURCE = 'urn:agentidp-bench:opaque';
// The registered resource of bench/load.sh's token-resource scenario, as AgentIdP has it.
const MCP_RESOURCE = 'https://bench.example.com/mcp';

const clients = [];
for (const line of readFileSync(values.clients, 'utf8').split('\n')) {
  const at = line.indexOf(':');
  if (at > 0) {
    clients.push({
      client_id: line.slice(0, at),
      client_secret: line.slice(at + 1).trim(),
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      // Defaults to RS256, which oidc-provider refuses when the key set has no RSA key.
      id_token_signed_response_alg: alg,
      scope: 'agents:read bench:call',
    });
  }
}

if (values['pkjwt-client']) {
  const { client_id: clientId, jwks } = JSON.parse(readFileSync(values['pkjwt-client'], 'utf8'));
  clients.push({
    client_id: clientId,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks,
    id_token_signed_response_alg: alg,
    scope: 'agents:read bench:call',
  });
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['agents:read', 'bench:call'],
  ttl: { ClientCredentials: 3600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => JWT_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource === JWT_RESOURCE) {
          return {
            scope: 'agents:read',
            audience: issuer,
            accessTokenTTL: 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        }
        if (resource === MCP_RESOURCE) {
          return {
            scope: 'bench:call',
            audience: MCP_RESOURCE,
            accessTokenTTL: 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        }
        if (resource === OPAQUE_RESOURCE) {
          return { scope: 'agents:read', accessTokenTTL: 3600, accessTokenFormat: 'opaque' };
        }
        throw new Error('unknown resource');
      },
    },
  },
});

const server = provider.listen(port, values.host, () => {
  console.log(JSON.stringify({ issuer, clients: clients.length }));
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
