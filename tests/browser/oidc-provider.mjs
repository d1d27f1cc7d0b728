#!/usr/bin/env node
// A real OpenID Provider (panva's certified `oidc-provider`) for wakeway's OIDC e2e tests.
//
// Usage: node provider.mjs --redirect-uri URL [--post-logout-redirect-uri URL] [--port 0]
//          [--host 127.0.0.1] [--client-id wakeway] [--client-secret S]
// Prints ONE JSON line on stdout once listening: {"issuer","port","client_id","client_secret"}; logs go to stderr.
//
// Accounts (type the name in the dev login form; any password):
//   alice  alice@example.com  verified   groups [developers]
//   bob    bob@example.com    verified   groups []
//   root   root@example.com   verified   groups [wakeway-admins]
//   eve    eve@example.com    NOT verified
// Any other name is refused (the login form comes back).
//
// Test controls (POST, plain HTTP, same port; never under the issuer's OIDC routes):
//   /__control/down        every other request answers 503 until /__control/up
//   /__control/down?at=token  only the token endpoint is gone (its connections are cut, as if the provider died
//                          between the login form and the code exchange)
//   /__control/up
//   /__control/rotate      new signing key; JWKS = [new, old] (the new one signs from now on)
//   /__control/tamper?mode=nonce|aud|iss|exp|iat-future|unknown-key|bad-signature|none
//                          ID tokens from /token are re-signed with that defect (until mode=none)
//   GET /__control/state   {"down","tamper","kids","jwks"}; jwks counts the requests for the key set
import http from 'node:http';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const { values: a } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'client-id': { type: 'string', default: 'wakeway' },
    'client-secret': { type: 'string', default: 'wakeway-test-client-secret-0123456789' },
    'redirect-uri': { type: 'string', multiple: true },
    'post-logout-redirect-uri': { type: 'string', multiple: true, default: [] },
  },
});
if (!a['redirect-uri']?.length) {
  console.error('--redirect-uri is required');
  process.exit(2);
}

const ACCOUNTS = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice', groups: ['developers'] },
  bob: { email: 'bob@example.com', email_verified: true, name: 'Bob', groups: [] },
  root: { email: 'root@example.com', email_verified: true, name: 'Root', groups: ['wakeway-admins'] },
  eve: { email: 'eve@example.com', email_verified: false, name: 'Eve', groups: [] },
};

async function newKey() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: `k-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, alg: 'RS256', use: 'sig' };
}

const state = { down: false, tamper: 'none', keys: [await newKey()], jwks: 0 };
const stranger = await newKey(); // never published: for mode=unknown-key

const server = http.createServer();
await new Promise((r) => server.listen(Number(a.port), a.host, r));
const port = server.address().port;
const issuer = `http://${a.host}:${port}`;

function build() {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: a['client-id'],
      client_secret: a['client-secret'],
      redirect_uris: a['redirect-uri'],
      post_logout_redirect_uris: a['post-logout-redirect-uri'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: state.keys },
    cookies: { keys: ['oidc-test-cookie-key-0123456789abcdef'] }, // the same across rotations: sessions survive
    pkce: { required: () => true },
    // Put the scope claims (email, groups) in the ID token itself, as Google, Keycloak and Dex do.
    conformIdTokenClaims: false,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
    ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 60, Session: 3600, Grant: 3600, Interaction: 600 },
    async findAccount(_ctx, id) {
      const claims = ACCOUNTS[id];
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
  });
  provider.use(tamperIdTokens);
  return provider;
}

async function tamperIdTokens(ctx, next) {
  await next();
  if (state.tamper === 'none' || ctx.path !== '/token' || !ctx.body?.id_token) return;
  const now = Math.floor(Date.now() / 1000);
  const claims = jose.decodeJwt(ctx.body.id_token);
  let key = state.keys[0];
  switch (state.tamper) {
    case 'nonce': claims.nonce = 'not-the-nonce-you-sent'; break;
    case 'aud': claims.aud = 'someone-else'; break;
    case 'iss': claims.iss = `${issuer}/elsewhere`; break;
    case 'exp': claims.iat = now - 7200; claims.exp = now - 3600; break;
    case 'iat-future': claims.iat = now + 3600; claims.exp = now + 7200; break;
    case 'unknown-key': key = stranger; break;
    case 'bad-signature': break;
    default: return;
  }
  const priv = await jose.importJWK(key, 'RS256');
  let jwt = await new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: key.kid }).sign(priv);
  if (state.tamper === 'bad-signature') jwt = jwt.slice(0, -4) + (jwt.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  ctx.body = { ...ctx.body, id_token: jwt };
  console.error(`[provider] tampered ID token: ${state.tamper}`);
}

let provider = build();
server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/__control/')) {
    const what = url.pathname.slice('/__control/'.length);
    if (what === 'down') state.down = url.searchParams.get('at') ?? true;
    else if (what === 'up') state.down = false;
    else if (what === 'rotate') { state.keys = [await newKey(), state.keys[0]]; provider = build(); }
    else if (what === 'tamper') state.tamper = url.searchParams.get('mode') ?? 'none';
    else if (what !== 'state') { res.writeHead(404).end(); return; }
    console.error(`[provider] control ${what}: down=${state.down} tamper=${state.tamper}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ down: state.down, tamper: state.tamper, kids: state.keys.map((k) => k.kid), jwks: state.jwks }));
    return;
  }
  if (url.pathname === '/jwks') state.jwks++;
  if (state.down === 'token' && url.pathname === '/token') {
    console.error('[provider] token request cut (control down?at=token)');
    req.socket.destroy();
    return;
  }
  if (state.down === true) {
    res.writeHead(503, { 'content-type': 'text/plain', 'retry-after': '5' }).end('provider down (test control)\n');
    return;
  }
  provider.callback()(req, res);
});

console.log(JSON.stringify({ issuer, port, client_id: a['client-id'], client_secret: a['client-secret'] }));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
