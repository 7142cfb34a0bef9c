// An agent acting for another agent (token exchange, RFC 8693) with openid-client (panva's, 6.x)
// and jose, as an agent's developer and a resource server's would write them, for the interop
// tests (tests/interop/test_delegation.py runs it; scripts/interop.sh runs them):
//
//   TX_ISSUER=... TX_CLIENT_ID=... TX_CLIENT_SECRET=... TX_SUBJECT_TOKEN=... \
//     [TX_ACTOR_TOKEN=...] [TX_SCOPE=...] [TX_RESOURCE=...] \
//     [TX_EXPECTED_SUBJECT=agent id] [TX_EXPECTED_ACTOR=agent id] [TX_TIMEOUT_MS=30000] \
//     node tests/interop/token_exchange_client.mjs
//
// The actor (the client TX_CLIENT_ID, authenticating with `ClientSecretBasic`) discovers the
// authorization server from TX_ISSUER with openid-client's `discovery` (OpenID Connect discovery;
// `allowInsecureRequests`, since the server is plain http on loopback), then sends the token
// exchange with `genericGrantRequest`: grant_type urn:ietf:params:oauth:grant-type:token-exchange,
// the subject's token as `subject_token` (and, when TX_ACTOR_TOKEN is set, its own token as
// `actor_token`), both of type urn:ietf:params:oauth:token-type:access_token, with `scope` and
// `resource` when set.
//
// The token it gets is then checked as a resource server would check it, with jose's `jwtVerify`
// against the discovered `jwks_uri` (`createRemoteJWKSet`): the signature, with the algorithms the
// metadata lists for access tokens; `typ` at+jwt; `iss` the discovered issuer; `aud` TX_RESOURCE
// (when set); `sub` TX_EXPECTED_SUBJECT (when set); and an `act` claim present (`requiredClaims`).
// When TX_EXPECTED_ACTOR is set, the actor that `act` names must be that agent. Last, openid-client's
// `tokenIntrospection` asks the server about the token.
//
// With TX_MODE=verify, no exchange: the token TX_TOKEN is only checked, as above.
//
// It prints one JSON object on stdout and exits 0:
//
//   {"issuer", "jwksUri", "token": {...the token response}, "verified": {"protectedHeader",
//    "payload"}, "introspection": {...}, "requests": [{"method", "url", "status", "form"}, ...]}
//
// `requests` is every HTTP request openid-client and jose made, in order, with the form fields it
// sent (a logging wrapper passed as openid-client's `customFetch` and jose's `[customFetch]`). On a
// refusal, of the server or of a check, it prints {"error": {"name", "message", "code", "status",
// "error", "error_description", "claim", "reason"}, "requests"} on stdout and exits 1; after
// TX_TIMEOUT_MS it exits 2.

import * as client from 'openid-client';
import { createRemoteJWKSet, customFetch as joseCustomFetch, jwtVerify } from 'jose';

const TIMEOUT_MS = Number(process.env.TX_TIMEOUT_MS ?? 30000);
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

function required(name) {
    const value = process.env[name];
    if (!value) {
        console.error(`token_exchange_client: ${name} is not set`);
        process.exit(1);
    }
    return value;
}

const requests = [];

async function loggingFetch(url, options) {
    let form = null;
    if (options?.body instanceof URLSearchParams) {
        form = Object.fromEntries(options.body);
    } else if (typeof options?.body === 'string') {
        form = Object.fromEntries(new URLSearchParams(options.body));
    }
    const response = await fetch(url, options);
    requests.push({ method: options?.method ?? 'GET', url: String(url), status: response.status, form });
    return response;
}

class ActorMismatch extends Error {
    constructor(message) {
        super(message);
        this.name = 'ActorMismatch';
        this.code = 'ACTOR_MISMATCH';
        this.claim = 'act';
    }
}

// What a resource server that cares who acts checks of a delegated token.
async function verify(token, metadata) {
    const jwks = createRemoteJWKSet(new URL(metadata.jwks_uri), { [joseCustomFetch]: loggingFetch });
    const options = {
        issuer: metadata.issuer,
        typ: 'at+jwt',
        algorithms: metadata.access_token_signing_alg_values_supported,
        requiredClaims: ['act'],
    };
    if (process.env.TX_RESOURCE) {
        options.audience = process.env.TX_RESOURCE;
    }
    if (process.env.TX_EXPECTED_SUBJECT) {
        options.subject = process.env.TX_EXPECTED_SUBJECT;
    }
    const { payload, protectedHeader } = await jwtVerify(token, jwks, options);
    const actor = process.env.TX_EXPECTED_ACTOR;
    if (actor && payload.act?.sub !== actor) {
        throw new ActorMismatch(`the token's act names ${JSON.stringify(payload.act)}, not ${actor}`);
    }
    return { payload, protectedHeader };
}

async function main() {
    const config = await client.discovery(
        new URL(required('TX_ISSUER')),
        required('TX_CLIENT_ID'),
        undefined,
        client.ClientSecretBasic(required('TX_CLIENT_SECRET')),
        { execute: [client.allowInsecureRequests], [client.customFetch]: loggingFetch, timeout: 10 },
    );
    const metadata = config.serverMetadata();
    const output = { issuer: metadata.issuer, jwksUri: metadata.jwks_uri };

    if (process.env.TX_MODE === 'verify') {
        output.verified = await verify(required('TX_TOKEN'), metadata);
    } else {
        const parameters = {
            subject_token: required('TX_SUBJECT_TOKEN'),
            subject_token_type: ACCESS_TOKEN,
        };
        if (process.env.TX_ACTOR_TOKEN) {
            parameters.actor_token = process.env.TX_ACTOR_TOKEN;
            parameters.actor_token_type = ACCESS_TOKEN;
        }
        if (process.env.TX_SCOPE) {
            parameters.scope = process.env.TX_SCOPE;
        }
        if (process.env.TX_RESOURCE) {
            parameters.resource = process.env.TX_RESOURCE;
        }
        const tokens = await client.genericGrantRequest(config, TOKEN_EXCHANGE, parameters);
        output.token = { ...tokens };
        output.verified = await verify(tokens.access_token, metadata);
        output.introspection = { ...(await client.tokenIntrospection(config, tokens.access_token)) };
    }
    output.requests = requests;
    process.stdout.write(JSON.stringify(output) + '\n');
}

const timer = setTimeout(() => {
    console.error(`token_exchange_client: no result within ${TIMEOUT_MS} ms`);
    process.exit(2);
}, TIMEOUT_MS);
timer.unref();

main().then(
    () => process.exit(0),
    (e) => {
        console.error(`token_exchange_client: ${e?.stack ?? e}`);
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
            claim: e?.claim ?? null,
            reason: e?.reason ?? null,
        };
        process.stdout.write(JSON.stringify({ error, requests }) + '\n');
        process.exit(1);
    },
);
