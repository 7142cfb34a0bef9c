// An OAuth client written with openid-client (panva's, 6.x), authenticating with private_key_jwt
// (RFC 7523 §2.2), as an agent's developer would write it, for the interop tests
// (tests/interop/test_private_key_jwt.py runs it; scripts/interop.sh runs them):
//
//   PKJ_ISSUER=... PKJ_CLIENT_ID=... PKJ_PRIVATE_KEY=<PKCS#8 PEM> PKJ_KEY_ALG=ES256 \
//     [PKJ_KEY_ID=kid] [PKJ_SCOPE=...] [PKJ_ASSERTION_ALG=EdDSA] [PKJ_TIMEOUT_MS=30000] \
//     node tests/interop/private_key_jwt_client.mjs
//
// It imports the private key with jose (`importPKCS8`, for PKJ_KEY_ALG), discovers the
// authorization server from PKJ_ISSUER with openid-client's `discovery` (its default, OpenID
// Connect discovery; `allowInsecureRequests`, since the server is plain http on loopback), with
// `PrivateKeyJwt({key, kid})` as the client authentication, then runs `clientCredentialsGrant`
// and `tokenIntrospection` of the access token it got. openid-client builds each assertion
// itself (aud = the issuer, a fresh jti, exp 60 s ahead). PKJ_ASSERTION_ALG, when set, rewrites
// the assertion's `alg` header through openid-client's documented `modifyAssertion` hook (the
// signature is unchanged), for servers that know an algorithm by another name.
//
// It prints one JSON object on stdout and exits 0:
//
//   {"issuer", "tokenEndpoint", "introspectionEndpoint", "token": {...the token response},
//    "introspection": {...}, "requests": [{"method", "url", "status", "assertion"}, ...]}
//
// `requests` is every HTTP request openid-client made, in order, with the client_assertion it
// sent, if any (a logging wrapper passed as openid-client's `customFetch`). On a refusal it prints
// {"error": {"name", "message", "code", "status", "error", "error_description"}, "requests"}
// on stdout and exits 1; after PKJ_TIMEOUT_MS it exits 2.

import * as client from 'openid-client';
import { importPKCS8 } from 'jose';

const TIMEOUT_MS = Number(process.env.PKJ_TIMEOUT_MS ?? 30000);

function required(name) {
    const value = process.env[name];
    if (!value) {
        console.error(`private_key_jwt_client: ${name} is not set`);
        process.exit(1);
    }
    return value;
}

const requests = [];

async function loggingFetch(url, options) {
    let assertion = null;
    if (options?.body instanceof URLSearchParams) {
        assertion = options.body.get('client_assertion');
    } else if (typeof options?.body === 'string') {
        assertion = new URLSearchParams(options.body).get('client_assertion');
    }
    const response = await fetch(url, options);
    requests.push({ method: options?.method ?? 'GET', url: String(url), status: response.status, assertion });
    return response;
}

async function main() {
    const issuer = required('PKJ_ISSUER');
    const clientId = required('PKJ_CLIENT_ID');
    const key = await importPKCS8(required('PKJ_PRIVATE_KEY'), required('PKJ_KEY_ALG'));
    const kid = process.env.PKJ_KEY_ID || undefined;
    const assertionAlg = process.env.PKJ_ASSERTION_ALG || undefined;

    const options = {};
    if (assertionAlg) {
        options[client.modifyAssertion] = (header) => {
            header.alg = assertionAlg;
        };
    }
    const config = await client.discovery(
        new URL(issuer),
        clientId,
        undefined,
        client.PrivateKeyJwt({ key, kid }, options),
        { execute: [client.allowInsecureRequests], [client.customFetch]: loggingFetch, timeout: 10 },
    );
    const metadata = config.serverMetadata();

    const parameters = {};
    if (process.env.PKJ_SCOPE) {
        parameters.scope = process.env.PKJ_SCOPE;
    }
    const tokens = await client.clientCredentialsGrant(config, parameters);
    const introspection = await client.tokenIntrospection(config, tokens.access_token);

    process.stdout.write(
        JSON.stringify({
            issuer: metadata.issuer,
            tokenEndpoint: metadata.token_endpoint,
            introspectionEndpoint: metadata.introspection_endpoint,
            token: { ...tokens },
            introspection: { ...introspection },
            requests,
        }) + '\n',
    );
}

const timer = setTimeout(() => {
    console.error(`private_key_jwt_client: no result within ${TIMEOUT_MS} ms`);
    process.exit(2);
}, TIMEOUT_MS);
timer.unref();

main().then(
    () => process.exit(0),
    (e) => {
        console.error(`private_key_jwt_client: ${e?.stack ?? e}`);
        if (e?.cause) {
            console.error('cause:', e.cause);
        }
        const error = {
            name: e?.name ?? null,
            message: e?.message ?? String(e),
            code: e?.code ?? null,
            status: e?.status ?? null,
            error: e?.error ?? null,
            error_description: e?.error_description ?? null,
        };
        process.stdout.write(JSON.stringify({ error, requests }) + '\n');
        process.exit(1);
    },
);
