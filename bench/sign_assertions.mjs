// Client assertions (RFC 7523, private_key_jwt) for bench/load.sh's token-pkjwt scenario, with
// node's own crypto: nothing to install beyond the node that oidc-provider already needs.
//
//   node sign_assertions.mjs keygen --key FILE
//       a fresh P-256 key pair: the private JWK (with its kid) is written to FILE, the public JWK
//       printed on stdout as one line of JSON, ready for {"keys": [...]}
//   node sign_assertions.mjs sign --key FILE --client ID --aud URL --count N --out FILE [--lifetime S]
//       N assertions signed ES256 with that key, one a line: iss = sub = ID, aud = URL,
//       iat = now, exp = now + S (default 300, AgentIdP's default maximum), and a jti of its own
//       (a random prefix for this pool, then the line's number), so no two are alike, within or
//       across pools
//
// Each assertion is accepted once by either server (both refuse a jti they have seen), so a load
// run needs as many as it sends requests; load.sh signs a pool right before each run.

import { createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
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
  const count = Number(values.count);
  const lifetime = Number(values.lifetime);
  if (!Number.isInteger(count) || count < 1) fail('--count must be a positive integer');
  if (!Number.isInteger(lifetime) || lifetime < 1) fail('--lifetime must be a positive integer');
  const jwk = JSON.parse(readFileSync(values.key, 'utf8'));
  const key = createPrivateKey({ key: jwk, format: 'jwk' });
  const header = b64url(JSON.stringify({ alg: 'ES256', kid: jwk.kid }));
  const iat = Math.floor(Date.now() / 1000);
  const exp = iat + lifetime;
  const prefix = randomBytes(8).toString('hex');
  // The claims but the jti are the same for the whole pool: JSON-encoded once.
  const fixed = JSON.stringify({ iss: values.client, sub: values.client, aud: values.aud, iat, exp })
    .slice(0, -1);
  const fd = openSync(values.out, 'w');
  let chunk = [];
  for (let i = 1; i <= count; i += 1) {
    const input = `${header}.${b64url(`${fixed},"jti":"${prefix}-${i}"}`)}`;
    const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    chunk.push(`${input}.${signature.toString('base64url')}\n`);
    if (chunk.length === 4096 || i === count) {
      writeSync(fd, chunk.join(''));
      chunk = [];
    }
  }
  closeSync(fd);
} else {
  fail('usage: sign_assertions.mjs keygen --key FILE | sign --key FILE --client ID --aud URL --count N --out FILE');
}
