// Client assertions (RFC 7523, private_key_jwt) for bench/load.sh's token-pkjwt scenario and DPoP
// proofs (RFC 9449) for its token-dpop scenario, with node's own crypto: nothing to install beyond
// the node that oidc-provider already needs.
//
//   node sign_assertions.mjs keygen --key FILE
//       a fresh P-256 key pair: the private JWK (with its kid) is written to FILE, the public JWK
//       printed on stdout as one line of JSON, ready for {"keys": [...]}
//   node sign_assertions.mjs sign --key FILE --client ID --aud URL --count N --out FILE [--lifetime S]
//       N assertions signed ES256 with that key, one a line: iss = sub = ID, aud = URL,
//       iat = now, exp = now + S (default 300, AgentIdP's default maximum), and a jti of its own
//       (a random prefix for this pool, then the line's number), so no two are alike, within or
//       across pools
//   node sign_assertions.mjs dpop --key FILE --htu URL --count N --out FILE [--iat-lead S]
//       N DPoP proofs signed ES256 with that key, one a line: header typ = dpop+jwt and jwk = the
//       public key (kty, crv, x, y: nothing private); claims htm = POST, htu = URL, iat = now + S
//       (default 0: now; both servers accept an iat that far ahead of their clock as behind it, so
//       a lead lets a pool stay fresh through a long run) and a jti of its own (as above). Prints
//       one line of JSON on stdout: {"iat": ..., "jkt": the key's RFC 7638 thumbprint, which the
//       access tokens bound to it carry as cnf.jkt}
//
// Each assertion or proof is accepted once by either server (both refuse a jti they have seen), so
// a load run needs as many as it sends requests; load.sh signs a pool right before each run.

import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';

const [command, ...rest] = process.argv.slice(2);
const { values } = parseArgs({
  args: rest,
  options: {
    key: { type: 'string' },
    client: { type: 'string' },
    aud: { type: 'string' },
    count: { type: 'string' },
    out: { type: 'string' },
    lifetime: { type: 'string', default: '300' },
    htu: { type: 'string' },
    'iat-lead': { type: 'string', default: '0' },
  },
});

function fail(message) {
  console.error(`sign_assertions.mjs: ${message}`);
  process.exit(2);
}

const b64url = (data) => Buffer.from(data).toString('base64url');

if (command === 'keygen') {
  if (!values.key) fail('keygen needs --key FILE');
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = `bench-pkjwt-${randomBytes(4).toString('hex')}`;
  writeFileSync(values.key, JSON.stringify({ ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256' }),
    { mode: 0o600 });
  console.log(JSON.stringify({ ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' }));
} else if (command === 'sign') {
  for (const name of ['key', 'client', 'aud', 'count', 'out']) {
    if (!values[name]) fail(`sign needs --${name}`);
  }
  const lifetime = Number(values.lifetime);
  if (!Number.isInteger(lifetime) || lifetime < 1) fail('--lifetime must be a positive integer');
  const jwk = JSON.parse(readFileSync(values.key, 'utf8'));
  const header = { alg: 'ES256', kid: jwk.kid };
  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + lifetime;
  signPool(jwk, header, { iss: values.client, sub: values.client, aud: values.aud, iat, exp });
} else if (command === 'dpop') {
  for (const name of ['key', 'htu', 'count', 'out']) {
    if (!values[name]) fail(`dpop needs --${name}`);
  }
  const lead = Number(values['iat-lead']);
  if (!Number.isInteger(lead) || lead < 0) fail('--iat-lead must be a whole number of seconds, 0 or more');
  const jwk = JSON.parse(readFileSync(values.key, 'utf8'));
  // The public members only, in RFC 7638's order: the thumbprint's input is exactly this JSON.
  const publicJwk = { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  const jkt = createHash('sha256').update(JSON.stringify(publicJwk)).digest('base64url');
  const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: publicJwk };
  const iat = Math.floor(Date.now() / 1000) + lead;
  signPool(jwk, header, { htm: 'POST', htu: values.htu, iat });
  console.log(JSON.stringify({ iat, jkt }));
} else {
  fail('usage: sign_assertions.mjs keygen --key FILE | sign --key FILE --client ID --aud URL --count N --out FILE'
    + ' | dpop --key FILE --htu URL --count N --out FILE [--iat-lead S]');
}

// Writes --count JWTs to --out, one a line, signed ES256 with the private JWK: the header and
// claims given, and a jti of each one's own (a random prefix for this pool, then the line's number).
function signPool(jwk, header, claims) {
  const count = Number(values.count);
  if (!Number.isInteger(count) || count < 1) fail('--count must be a positive integer');
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const encodedHeader = b64url(JSON.stringify(header));
  const prefix = randomBytes(8).toString('hex');
  // The claims but the jti are the same for the whole pool: JSON-encoded once.
  const fixed = JSON.stringify(claims).slice(0, -1);
  const fd = openSync(values.out, 'w');
  let chunk = [];
  for (let i = 1; i <= count; i += 1) {
    const input = `${encodedHeader}.${b64url(`${fixed},"jti":"${prefix}-${i}"}`)}`;
    const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    chunk.push(`${input}.${signature.toString('base64url')}\n`);
    if (chunk.length === 4096 || i === count) {
      writeSync(fd, chunk.join(''));
      chunk = [];
    }
  }
  closeSync(fd);
}
