// A local, independent OpenID provider: panva's oidc-provider (OpenID Certified), configured
// here and never modified. localinfra (localinfra/oidc_idp.py) installs the pinned package with
// `npm ci` and starts this script as `node server.mjs <config.json>`.
//
// Two listeners on 127.0.0.1:
// - the provider (issuer http://127.0.0.1:<port>): discovery, /auth, /token, /me, /jwks,
//   /token/introspection, /token/revocation, and our minimal login and consent pages under
//   /interaction/<uid> that a test drives over plain HTTP;
// - an admin API (its own port, loopback peers only, `Authorization: Bearer <admin_token>`) for
//   tests and `make run`: accounts, clients, the access-token lifetime, revoking every grant of
//   an account (what a user removing our app at the provider does), and a log of what was issued
//   and revoked (token kinds and accounts, never token values).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const MAX_BODY_BYTES = 16 * 1024;
const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

// --- state -------------------------------------------------------------------------------------

const accountsBySub = new Map(); // sub -> {sub, email, email_verified}
const subsByEmail = new Map(); // lower-cased address -> sub
const settings = { accessTokenTtl: config.access_token_ttl ?? 3600 };
const introspectionClients = new Set(config.introspection_clients ?? []);
const issued = []; // {kind, sub, client_id, grant_id, at}
const revocations = []; // {kind, via, sub, email, client_id, grant_id, at}

function putAccount(email, { sub, email_verified: verified } = {}) {
  const key = email.toLowerCase();
  const existing = subsByEmail.get(key);
  const account = {
    sub: sub ?? existing ?? `sub-${crypto.randomUUID()}`,
    email,
    email_verified: verified ?? true,
  };
  if (existing && existing !== account.sub) accountsBySub.delete(existing);
  accountsBySub.set(account.sub, account);
  subsByEmail.set(key, account.sub);
  return account;
}

for (const account of config.accounts ?? []) putAccount(account.email, account);

// --- storage: the provider's models in memory, indexed by grant -------------------------------

const store = new Map(); // "<Model>:<id>" -> {payload, expiresAt}
const grantIndex = new Map(); // grantId -> Set of store keys

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
    if (this.model === 'Session') store.set(`SessionUid:${payload.uid}`, { payload: id, expiresAt: 0 });
    if (payload.userCode) store.set(`UserCode:${payload.userCode}`, { payload: id, expiresAt: 0 });
    if (payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = live(`SessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = live(`UserCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) {
      if (key.startsWith(`${this.model}:`)) store.delete(key);
    }
  }
}

// Every token and code of a grant, and the grant itself: what a provider does when the user
// removes the app's access.
function revokeGrant(grantId) {
  for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
  grantIndex.delete(grantId);
  store.delete(`Grant:${grantId}`);
}

function grantsOf(sub) {
  const found = [];
  for (const [key, entry] of store) {
    if (key.startsWith('Grant:') && entry.payload.accountId === sub) found.push(entry.payload);
  }
  return found;
}

// --- the provider ------------------------------------------------------------------------------

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

const provider = new Provider(config.issuer, {
  adapter: MemoryAdapter,
  clients: config.clients ?? [],
  jwks: { keys: [signingKey()] },
  cookies: { keys: [config.cookie_key] },
  scopes: ['openid', 'offline_access', 'email'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  responseTypes: ['code'],
  pkce: { required: () => true },
  clientBasedCORS: () => false,
  features: {
    devInteractions: { enabled: false },
    // Dovecot's oauth2 passdb asks here whether a token is active and whose it is. Only the
    // resource servers (Dovecot) and the token's own client may ask.
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) =>
        introspectionClients.has(client.clientId) || client.clientId === token.clientId,
    },
    revocation: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId,
    },
  },
  // Opaque access tokens; their introspection names the mailbox (Dovecot's username_attribute).
  extraTokenClaims: async (ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const account = accountsBySub.get(token.accountId);
    return account ? { email: account.email } : undefined;
  },
  ttl: {
    AccessToken: () => settings.accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 14 * 24 * 3600,
    RefreshToken: 14 * 24 * 3600,
  },
  findAccount: async (ctx, sub) => {
    const account = accountsBySub.get(sub);
    if (!account) return undefined;
    return { accountId: sub, claims: async () => ({ ...account }) };
  },
  interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
});

const now = () => new Date().toISOString();
for (const [event, kind] of [['access_token.saved', 'access_token'], ['refresh_token.saved', 'refresh_token']]) {
  provider.on(event, (token) => {
    issued.push({ kind, sub: token.accountId, client_id: token.clientId, grant_id: token.grantId, at: now() });
  });
}
provider.on('access_token.destroyed', (token) => noteRevocation('access_token', 'revocation', token));
provider.on('refresh_token.destroyed', (token) => noteRevocation('refresh_token', 'revocation', token));
provider.on('grant.revoked', (ctx, grantId) => {
  const token = ctx.oidc.entities.RefreshToken ?? ctx.oidc.entities.AccessToken ?? {};
  noteRevocation('grant', ctx.oidc.route, { ...token, grantId });
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));

function noteRevocation(kind, via, { accountId, clientId, grantId }) {
  revocations.push({
    kind,
    via,
    sub: accountId,
    email: accountsBySub.get(accountId)?.email,
    client_id: clientId,
    grant_id: grantId,
    at: now(),
  });
}

// --- login and consent pages --------------------------------------------------------------------

function escape(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function loginPage(res, uid, params, error) {
  const problem = error ? `<p data-error="${escape(error)}">${escape(error)}</p>` : '';
  page(res, 200, 'Sign in', `${problem}
<form method="post" action="/interaction/${escape(uid)}/login" data-step="login">
  <label>Email address <input name="login" value="${escape(params.login_hint)}"></label>
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(res, uid, client, details) {
  const scopes = details.missingOIDCScope ?? [];
  page(res, 200, 'Allow access?', `<p>${escape(client.clientName ?? client.clientId)} asks for: ${escape(scopes.join(' '))}</p>
<form method="post" action="/interaction/${escape(uid)}/confirm" data-step="consent"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${escape(uid)}/abort" data-step="deny"><button type="submit">Deny</button></form>`);
}

async function readForm(req) {
  const raw = await readBody(req);
  return new URLSearchParams(raw.toString('utf8'));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function interaction(req, res, path) {
  const [, , uid, action] = path.split('/'); // /interaction/<uid>[/<action>]
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const { prompt, params } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return loginPage(res, uid, params);
    const client = await provider.Client.find(params.client_id);
    return consentPage(res, uid, client, prompt.details);
  }
  if (req.method !== 'POST') return page(res, 405, 'Method not allowed', '');
  if (action === 'login' && prompt.name === 'login') {
    const login = (await readForm(req)).get('login') ?? '';
    const sub = subsByEmail.get(login.trim().toLowerCase());
    if (!sub) return loginPage(res, uid, params, 'unknown account');
    return provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    await readForm(req);
    return provider.interactionFinished(req, res, { consent: { grantId: await grantFor(details) } }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    await readForm(req);
    const result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }
  return page(res, 400, 'Unexpected step', `<p>${escape(action)} does not fit ${escape(prompt.name)}</p>`);
}

// The grant the user consents to: everything the authorization request still misses.
async function grantFor(details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

const providerCallback = provider.callback();
const server = http.createServer((req, res) => {
  const path = new URL(req.url, config.issuer).pathname;
  if (!path.startsWith('/interaction/')) return providerCallback(req, res);
  return interaction(req, res, path).catch((error) => {
    console.error('interaction failed:', error.message);
    if (!res.headersSent) page(res, 400, 'Sign-in failed', `<p>${escape(error.message)}</p>`);
  });
});

// --- admin API ---------------------------------------------------------------------------------

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(text);
}

function authorized(req) {
  const peer = req.socket.remoteAddress;
  if (peer !== '127.0.0.1' && peer !== '::1' && peer !== '::ffff:127.0.0.1') return false;
  const expected = Buffer.from(`Bearer ${config.admin_token}`);
  const given = Buffer.from(req.headers.authorization ?? '');
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

async function registerClient(clientId, metadata) {
  await new MemoryAdapter('Client').upsert(clientId, {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...metadata,
    client_id: clientId,
  });
  const client = await provider.Client.find(clientId); // validates the metadata
  if (!client) throw new Error(`client ${clientId} not valid`);
}

async function admin(req, res) {
  if (!authorized(req)) return json(res, 401, { error: 'admin token required' });
  const url = new URL(req.url, 'http://admin');
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const body = req.method === 'GET' ? {} : JSON.parse((await readBody(req)).toString('utf8') || '{}');
  if (req.method === 'PUT' && parts[0] === 'accounts' && parts.length === 2) {
    return json(res, 200, putAccount(parts[1], body));
  }
  if (req.method === 'POST' && parts[0] === 'accounts' && parts[2] === 'revoke-grants') {
    const sub = subsByEmail.get(parts[1].toLowerCase());
    if (!sub) return json(res, 404, { error: 'unknown account' });
    const grants = grantsOf(sub);
    for (const grant of grants) {
      revokeGrant(grant.jti);
      noteRevocation('grant', 'admin', { accountId: sub, clientId: grant.clientId, grantId: grant.jti });
    }
    return json(res, 200, { revoked_grants: grants.length });
  }
  if (req.method === 'PUT' && parts[0] === 'clients' && parts.length === 2) {
    await registerClient(parts[1], body);
    return json(res, 200, { client_id: parts[1] });
  }
  if (req.method === 'PUT' && url.pathname === '/settings') {
    if (body.access_token_ttl !== undefined) settings.accessTokenTtl = Number(body.access_token_ttl);
    return json(res, 200, { access_token_ttl: settings.accessTokenTtl });
  }
  if (req.method === 'GET' && url.pathname === '/log') {
    return json(res, 200, { issued, revocations });
  }
  return json(res, 404, { error: 'no such admin route' });
}

const adminServer = http.createServer((req, res) => {
  admin(req, res).catch((error) => {
    if (!res.headersSent) json(res, 400, { error: error.message });
  });
});

server.listen(config.port, '127.0.0.1', () => {
  adminServer.listen(config.admin_port, '127.0.0.1', () => {
    console.log(`oidc-provider ready: issuer ${config.issuer}, admin port ${config.admin_port}`);
  });
});
for (const listener of [server, adminServer]) {
  listener.on('error', (error) => {
    console.error(`listen failed: ${error.message}`);
    process.exit(1);
  });
}
process.on('SIGTERM', () => process.exit(0));
