// DPoP (RFC 9449) clients written with panva's libraries, as an agent's developer would write
// them, for the interop tests (tests/interop/test_dpop.py runs it; scripts/interop.sh runs them):
//
//   DPOP_MODE=oauth4webapi|openid-client|dpop DPOP_ISSUER=... DPOP_CLIENT_ID=... \
//     DPOP_CLIENT_SECRET=... [DPOP_ALG=ES256] [DPOP_SCOPE=...] [DPOP_PATHS=/api/v1/agents,...] \
//     [DPOP_REFUSALS=1] [DPOP_TIMEOUT_MS=30000] node tests/interop/dpop_client.mjs
//
// Each mode gets a DPoP-bound access token with the client_credentials grant (the client
// authenticating with its secret, client_secret_basic), then calls each of DPOP_PATHS (paths of
// the management API, relative to the issuer, GET) with it:
//
//   - oauth4webapi: the authorization server's RFC 8414 metadata from DPOP_ISSUER (`discoveryRequest`
//     with algorithm 'oauth2', `processDiscoveryResponse`), a key pair from the library's
//     `generateKeyPair(DPOP_ALG)`, the handle `DPoP(client, keyPair)` passed as the `DPoP` option to
//     `clientCredentialsGrantRequest` and `protectedResourceRequest`. oauth4webapi leaves retrying to
//     its caller: when processing a response throws an error for which `isDPoPNonceError` is true,
//     the request is sent once more, as its documentation shows (the handle has cached the nonce
//     the server sent). With DPOP_REFUSALS=1, three more calls of the first path, each expected to
//     be refused with a `WWW-Authenticate` challenge that the library parses
//     (`WWWAuthenticateChallengeError`): the bound token without the DPoP option (so as a Bearer
//     token), the token with the DPoP handle of another key pair, and a token that is not one, as a
//     Bearer token;
//   - openid-client: `discovery` (OpenID Connect discovery of DPOP_ISSUER, `allowInsecureRequests`
//     since the server is plain http on loopback) with `ClientSecretBasic`, `randomDPoPKeyPair`,
//     `getDPoPHandle`, `clientCredentialsGrant` and `fetchProtectedResource` with the `DPoP` option:
//     openid-client retries a request refused with `use_dpop_nonce` by itself;
//   - dpop: panva's `dpop` package alone with the platform's `fetch`: `generateKeyPair(DPOP_ALG)`,
//     then `generateProof(keyPair, htu, htm, nonce, accessToken)` for each request, by hand: the
//     token request (sent again with the nonce of a `use_dpop_nonce` answer's DPoP-Nonce header)
//     and each resource request, with `Authorization: DPoP <token>`. With DPOP_REFUSALS=1 it also
//     sends the last resource request's proof a second time (a replay).
//
// Whatever the mode, the token is then checked as a resource server would: jose's `jwtVerify`
// against the metadata's `jwks_uri` (`typ` at+jwt, `iss` the issuer), and `cnf.jkt` is compared
// with the key's thumbprint as the library computes it and as jose computes it from the exported
// public JWK.
//
// It prints one JSON object on stdout and exits 0:
//
//   {"mode", "issuer", "tokenEndpoint", "jwksUri", "dpopAlgs", "token": {...the token response},
//    "thumbprint", "joseThumbprint", "verified": {"protectedHeader", "payload"}, "nonceRetries",
//    "resources": [{"path", "status", "body"}], "refusals": {name: {...}},
//    "requests": [{"method", "url", "status", "authorization", "proof": {"header", "payload"},
//                  "dpopNonce", "wwwAuthenticate", "error"}, ...]}
//
// `requests` is every HTTP request made, in order (a logging wrapper passed as the libraries'
// `customFetch`): the scheme of its Authorization header, its DPoP proof decoded, the DPoP-Nonce
// and WWW-Authenticate headers of the response and, for an error, its JSON body. On a failure it
// prints {"error": {"name", "message", "code", "status", "error", "error_description"},
// "requests"} on stdout and exits 1; after DPOP_TIMEOUT_MS it exits 2.

import * as oauth from 'oauth4webapi';
import * as client from 'openid-client';
import * as dpop from 'dpop';
import { calculateJwkThumbprint, createRemoteJWKSet, customFetch as joseCustomFetch, jwtVerify } from 'jose';

const TIMEOUT_MS = Number(process.env.DPOP_TIMEOUT_MS ?? 30000);

function required(name) {
    const value = process.env[name];
    if (!value) {
        console.error(`dpop_client: ${name} is not set`);
        process.exit(1);
    }
    return value;
}

function decodePart(part) {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function decodeJwt(jwt) {
    const [header, payload] = jwt.split('.');
    return { header: decodePart(header), payload: decodePart(payload) };
}

const requests = [];

async function loggingFetch(url, options) {
    const headers = new Headers(options?.headers);
    const proof = headers.get('dpop');
    const authorization = headers.get('authorization');
    const response = await fetch(url, options);
    let error = null;
    if (response.status >= 400) {
        try {
            error = await response.clone().json();
        } catch {
            error = null;
        }
    }
    requests.push({
        method: options?.method ?? 'GET',
        url: String(url),
        status: response.status,
        authorization: authorization ? authorization.split(' ')[0] : null,
        proof: proof ? decodeJwt(proof) : null,
        dpopNonce: response.headers.get('dpop-nonce'),
        wwwAuthenticate: response.headers.get('www-authenticate'),
        error,
    });
    return response;
}

async function readBody(response) {
    const text = await response.text();
    try {
        return JSON.parse(text);
    } catch {
        return text;
    }
}

function failure(e) {
    return {
        name: e?.name ?? null,
        message: e?.message ?? String(e),
        code: e?.code ?? null,
        status: e?.status ?? e?.response?.status ?? null,
        error: e?.error ?? null,
        error_description: e?.error_description ?? null,
    };
}

// What a library user sees of a refusal at a protected resource: oauth4webapi throws
// WWWAuthenticateChallengeError, whose `cause` is the parsed challenges.
async function refusal(call) {
    try {
        const response = await call();
        return { refused: false, status: response.status, body: await readBody(response) };
    } catch (e) {
        const seen = { refused: true, ...failure(e) };
        if (e instanceof oauth.WWWAuthenticateChallengeError) {
            seen.challenges = e.cause;
            seen.status = e.response.status;
            seen.body = await readBody(e.response);
        }
        return seen;
    }
}

async function oauth4webapiRun(settings) {
    const issuer = new URL(settings.issuer);
    const fetchOptions = { [oauth.allowInsecureRequests]: true, [oauth.customFetch]: loggingFetch };
    const as = await oauth.processDiscoveryResponse(
        issuer,
        await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...fetchOptions }),
    );
    const c = { client_id: settings.clientId };
    const clientAuth = oauth.ClientSecretBasic(settings.clientSecret);
    const keyPair = await oauth.generateKeyPair(settings.alg, { extractable: false });
    const DPoP = oauth.DPoP(c, keyPair);
    const parameters = settings.scope ? { scope: settings.scope } : {};

    // As oauth4webapi's documentation shows: a use_dpop_nonce refusal is retried once.
    let nonceRetries = 0;
    const grant = () => oauth.clientCredentialsGrantRequest(as, c, clientAuth, parameters, { DPoP, ...fetchOptions });
    let token;
    try {
        token = await oauth.processClientCredentialsResponse(as, c, await grant());
    } catch (e) {
        if (!oauth.isDPoPNonceError(e)) {
            throw e;
        }
        nonceRetries += 1;
        token = await oauth.processClientCredentialsResponse(as, c, await grant());
    }

    const resources = [];
    for (const path of settings.paths) {
        const response = await oauth.protectedResourceRequest(
            token.access_token,
            'GET',
            new URL(path, settings.issuer),
            undefined,
            undefined,
            { DPoP, ...fetchOptions },
        );
        resources.push({ path, status: response.status, body: await readBody(response) });
    }

    const refusals = {};
    if (settings.refusals) {
        const url = new URL(settings.paths[0], settings.issuer);
        refusals.bearer = await refusal(() =>
            oauth.protectedResourceRequest(token.access_token, 'GET', url, undefined, undefined, fetchOptions),
        );
        const otherDPoP = oauth.DPoP(c, await oauth.generateKeyPair(settings.alg));
        refusals.otherKey = await refusal(() =>
            oauth.protectedResourceRequest(token.access_token, 'GET', url, undefined, undefined, {
                DPoP: otherDPoP,
                ...fetchOptions,
            }),
        );
        refusals.notAToken = await refusal(() =>
            oauth.protectedResourceRequest('not-a-token', 'GET', url, undefined, undefined, fetchOptions),
        );
    }

    return {
        as,
        token,
        thumbprint: await DPoP.calculateThumbprint(),
        publicKey: keyPair.publicKey,
        nonceRetries,
        resources,
        refusals,
    };
}

async function openidClientRun(settings) {
    const config = await client.discovery(
        new URL(settings.issuer),
        settings.clientId,
        undefined,
        client.ClientSecretBasic(settings.clientSecret),
        { execute: [client.allowInsecureRequests], [client.customFetch]: loggingFetch, timeout: 10 },
    );
    const keyPair = await client.randomDPoPKeyPair(settings.alg);
    const DPoP = client.getDPoPHandle(config, keyPair);
    const parameters = settings.scope ? { scope: settings.scope } : {};
    const token = await client.clientCredentialsGrant(config, parameters, { DPoP });

    const resources = [];
    for (const path of settings.paths) {
        const response = await client.fetchProtectedResource(
            config,
            token.access_token,
            new URL(path, settings.issuer),
            'GET',
            undefined,
            undefined,
            { DPoP },
        );
        resources.push({ path, status: response.status, body: await readBody(response) });
    }
    const nonceRetries = requests.filter((r) => r.status === 400 && r.error?.error === 'use_dpop_nonce').length;
    return {
        as: config.serverMetadata(),
        token: { ...token },
        thumbprint: await DPoP.calculateThumbprint(),
        publicKey: keyPair.publicKey,
        nonceRetries,
        resources,
        refusals: {},
    };
}

async function dpopRun(settings) {
    // The metadata, read as any HTTP client would.
    const metadataUrl = new URL('/.well-known/oauth-authorization-server', settings.issuer);
    const as = await (await loggingFetch(metadataUrl.href, { method: 'GET' })).json();
    const keyPair = await dpop.generateKeyPair(settings.alg);
    const basic = Buffer.from(
        `${encodeURIComponent(settings.clientId)}:${encodeURIComponent(settings.clientSecret)}`,
    ).toString('base64');
    const form = new URLSearchParams({ grant_type: 'client_credentials' });
    if (settings.scope) {
        form.set('scope', settings.scope);
    }
    const tokenRequest = async (nonce) =>
        loggingFetch(as.token_endpoint, {
            method: 'POST',
            headers: {
                authorization: `Basic ${basic}`,
                'content-type': 'application/x-www-form-urlencoded',
                accept: 'application/json',
                dpop: await dpop.generateProof(keyPair, as.token_endpoint, 'POST', nonce),
            },
            body: form.toString(),
        });

    let nonceRetries = 0;
    let response = await tokenRequest();
    if (response.status === 400 && response.headers.has('dpop-nonce')) {
        const body = await response.clone().json();
        if (body.error === 'use_dpop_nonce') {
            nonceRetries += 1;
            response = await tokenRequest(response.headers.get('dpop-nonce'));
        }
    }
    const token = await response.json();
    if (response.status !== 200) {
        throw Object.assign(new Error(`token request refused: ${response.status}`), {
            name: 'TokenRequestRefused',
            status: response.status,
            ...token,
        });
    }

    const resources = [];
    let last = null;
    for (const path of settings.paths) {
        const url = new URL(path, settings.issuer);
        // htu: the URL without its query and fragment (RFC 9449 §4.2).
        const htu = `${url.origin}${url.pathname}`;
        const headers = {
            authorization: `DPoP ${token.access_token}`,
            dpop: await dpop.generateProof(keyPair, htu, 'GET', undefined, token.access_token),
        };
        const answer = await loggingFetch(url.href, { method: 'GET', headers });
        resources.push({ path, status: answer.status, body: await readBody(answer) });
        last = { url, headers };
    }

    const refusals = {};
    if (settings.refusals && last) {
        const replayed = await loggingFetch(last.url.href, { method: 'GET', headers: last.headers });
        refusals.replay = {
            status: replayed.status,
            wwwAuthenticate: replayed.headers.get('www-authenticate'),
            body: await readBody(replayed),
        };
    }

    return {
        as,
        token,
        thumbprint: await dpop.calculateThumbprint(keyPair.publicKey),
        publicKey: keyPair.publicKey,
        nonceRetries,
        resources,
        refusals,
    };
}

const MODES = { oauth4webapi: oauth4webapiRun, 'openid-client': openidClientRun, dpop: dpopRun };

async function main() {
    const mode = required('DPOP_MODE');
    const run = MODES[mode];
    if (!run) {
        throw new Error(`unknown DPOP_MODE ${mode}`);
    }
    const settings = {
        issuer: required('DPOP_ISSUER'),
        clientId: required('DPOP_CLIENT_ID'),
        clientSecret: required('DPOP_CLIENT_SECRET'),
        alg: process.env.DPOP_ALG || 'ES256',
        scope: process.env.DPOP_SCOPE || undefined,
        paths: (process.env.DPOP_PATHS || '/api/v1/agents').split(','),
        refusals: process.env.DPOP_REFUSALS === '1',
    };
    const result = await run(settings);

    // The token as a resource server checks it: signature, typ, issuer; then its binding.
    const jwks = createRemoteJWKSet(new URL(result.as.jwks_uri), { [joseCustomFetch]: loggingFetch });
    const verified = await jwtVerify(result.token.access_token, jwks, {
        issuer: result.as.issuer,
        typ: 'at+jwt',
        requiredClaims: ['cnf'],
    });
    const publicJwk = await crypto.subtle.exportKey('jwk', result.publicKey);

    process.stdout.write(
        JSON.stringify({
            mode,
            issuer: result.as.issuer,
            tokenEndpoint: result.as.token_endpoint,
            jwksUri: result.as.jwks_uri,
            dpopAlgs: result.as.dpop_signing_alg_values_supported ?? null,
            token: result.token,
            thumbprint: result.thumbprint,
            joseThumbprint: await calculateJwkThumbprint(publicJwk, 'sha256'),
            verified: { protectedHeader: verified.protectedHeader, payload: verified.payload },
            nonceRetries: result.nonceRetries,
            resources: result.resources,
            refusals: result.refusals,
            requests,
        }) + '\n',
    );
}

const timer = setTimeout(() => {
    console.error(`dpop_client: no result within ${TIMEOUT_MS} ms`);
    process.exit(2);
}, TIMEOUT_MS);
timer.unref();

main().then(
    () => process.exit(0),
    (e) => {
        console.error(`dpop_client: ${e?.stack ?? e}`);
        if (e?.cause) {
            console.error('cause:', e.cause);
        }
        process.stdout.write(JSON.stringify({ error: failure(e), requests }) + '\n');
        process.exit(1);
    },
);
