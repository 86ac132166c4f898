// A real OpenID provider for FluxLit's authentication tests (panva/oidc-provider 9, certified),
// started per test by fluxlit_testkit::idp on 127.0.0.1 with an OS-chosen port.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {"clients": [oidc-provider client metadata...], "ttl": {"AccessToken": 30, ...}}
// Prints one line to stdout when it listens: {"issuer": "http://127.0.0.1:PORT"}.
// Every token-endpoint grant is logged to stderr as "grant <grant_type>", so a test can count
// refreshes. Loopback only; the dev interactions (a login form that takes any user and
// password, then a consent button) stand in for a user.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    pkce: { required: () => true },
    // Claims of the granted scopes in the ID token too, as Keycloak, Entra ID and Google do
    // (oidc-provider's default puts them only in userinfo for response_type=code).
    conformIdTokenClaims: false,
    // The default issues refresh tokens only for offline_access with prompt=consent.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: { AccessToken: 300, IdToken: 300, AuthorizationCode: 60, Session: 3600, ...(config.ttl || {}) },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: `${sub}@example.test`,
            email_verified: true,
            name: `User ${sub}`,
            preferred_username: sub,
            // A user named many-groups-* is in 200 groups named like directory DNs
            // (~90 bytes each), as large directories make them.
            groups: sub.startsWith('many-groups')
              ? Array.from({ length: 200 }, (_, i) =>
                `CN=Analytics Platform Team ${i},OU=Security Groups,OU=Departments,DC=corp,DC=example,DC=test`)
              : ['staff'],
          };
        },
      };
    },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      revocation: { enabled: true },
    },
    cookies: { keys: ['fluxlit-test-only-not-a-secret'] },
    // Back-channel logout posts to the gateway on 127.0.0.1, which oidc-provider's SSRF guard
    // refuses (special-use addresses): this loopback-only test provider sends without it.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
  });
  provider.on('grant.success', (ctx) => {
    process.stderr.write(`grant ${ctx.oidc.params.grant_type}\n`);
  });
  provider.on('backchannel.success', (client, accountId, sid) => {
    process.stderr.write(`backchannel ok ${client.clientId} ${accountId}\n`);
  });
  provider.on('backchannel.error', (ctx, err, client) => {
    process.stderr.write(`backchannel error ${client && client.clientId} ${err && err.message} ${err && err.cause}\n`);
  });
  provider.on('end_session.success', () => {
    process.stderr.write('end_session ok\n');
  });
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error ${err && err.stack}\n`);
  });
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
