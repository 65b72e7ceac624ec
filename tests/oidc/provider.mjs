// A real OpenID provider for wgmesh's single sign-on tests: panva/oidc-provider (pinned in
// package.json), with users and groups of its own, started by tests/sso.rs.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"issuer": "http://198.18.x.1:9090", "host": "198.18.x.1", "port": 9090,
//          "client_id": "...", "client_secret": "...", "redirect_uris": ["..."],
//          "device_flow": true|false, "claims_in_userinfo_only": true|false,
//          "users": {"alice": {"email": "...", "email_verified": true, "groups": [...]}}}
//
// Every start makes a new signing key (a fresh `kid`), so restarting it is a key rotation.
// The pages are its own, plain HTML with nothing fetched from elsewhere (the default ones
// load a web font). Login: any user named in CONFIG, any password; consent is implied.

import Provider from 'oidc-provider';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;

const configuration = {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    grant_types: config.device_flow
      ? ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code']
      : ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'], profile: ['name'] },
  // Put the requested claims in the ID token too, as Keycloak, Okta and Authentik can; with
  // "claims_in_userinfo_only", follow OpenID Connect strictly (oidc-provider's default): the
  // scopes' claims are only in userinfo when an access token is issued.
  conformIdTokenClaims: !!config.claims_in_userinfo_only,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: !!config.device_flow,
      userCodeInputSource: async (ctx, form, out, err) => {
        ctx.body = page('Enter the code', `${form}<input id="user-code" name="user_code" form="op.deviceInputForm"><button id="submit-code" type="submit" form="op.deviceInputForm">Continue</button>${err ? `<p class="error">${esc(err.message)}</p>` : ''}`);
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = page('Confirm the device', `<p>Code <code id="device-code">${esc(userCode)}</code></p>${form}<button id="confirm" type="submit" form="op.deviceConfirmForm">Continue</button>`);
      },
      successSource: async (ctx) => {
        ctx.body = page('Device signed in', '<p id="device-done">You can close this page.</p>');
      },
    },
  },
  findAccount: async (ctx, id) => {
    if (!users[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...users[id] }) };
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', `<pre id="error">${esc(JSON.stringify(out))}</pre>`);
  },
  ttl: { AccessToken: 600, IdToken: 600, DeviceCode: 600, Interaction: 600, Session: 600, Grant: 600 },
};

const provider = new Provider(config.issuer, configuration);

async function formBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return new URLSearchParams(text);
}

// The login interaction: a form for the user name; consent is given with the login.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = page('Sign in', `<form id="login-form" method="post" action="/interaction/${esc(match[1])}"><input id="login" name="login" required><input id="password" name="password" type="password"><button id="sign-in" type="submit">Sign in</button></form>`);
    return undefined;
  }
  const form = await formBody(ctx.req);
  const accountId = form.get('login');
  if (!users[accountId]) {
    await provider.interactionFinished(ctx.req, ctx.res, { error: 'access_denied', error_description: `no such user ${accountId}` });
    return undefined;
  }
  const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
  return undefined;
});

provider.listen(config.port, config.host, () => {
  console.log(`oidc-provider listening on ${config.issuer} (kid ${jwk.kid}, device flow ${!!config.device_flow})`);
});
