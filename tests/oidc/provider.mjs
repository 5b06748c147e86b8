// A real, certified OpenID provider (panva's `oidc-provider`) on loopback, for kapflow's
// OpenID Connect tests only (tests/test_oidc.py starts it; never used in production).
//
// People sign in with the authorization-code flow + PKCE, through the provider's own
// development interactions (a login form that takes any login name: that name becomes the
// account id, hence the token's `sub`). The access token is issued for a resource indicator
// (RFC 8707) as a signed RS256 JWT (`accessTokenFormat: "jwt"`), with the person's roles
// added as a `roles` claim (`extraTokenClaims`), as a provider's role mapping would.
//
// Environment: PORT, ISSUER (e.g. http://127.0.0.1:PORT), KEY_FILE (the private signing JWKs,
// RSA and P-256, created on first start: two providers given the same file sign with the
// same keys),
// ROLES_JSON ({"login": ["role", ...]}), REDIRECT_URI, and DASHBOARD_REDIRECT_URI (optional:
// kapflow's dashboard, e.g. http://127.0.0.1:PORT/dashboard, which the "kapflow-dashboard"
// public client then also accepts, and whose origin CORS lets call the token endpoint).
import { generateKeyPairSync, randomUUID } from "node:crypto";
import fs from "node:fs";

import Provider from "oidc-provider";

const { PORT, ISSUER, KEY_FILE, REDIRECT_URI, DASHBOARD_REDIRECT_URI } = process.env;
const ROLES = JSON.parse(process.env.ROLES_JSON || "{}");

function signingKeys() {
  if (fs.existsSync(KEY_FILE)) return JSON.parse(fs.readFileSync(KEY_FILE, "utf8"));
  const jwk = (privateKey, alg) => ({ ...privateKey.export({ format: "jwk" }), kid: randomUUID(), alg, use: "sig" });
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  const keys = [jwk(rsa, "RS256"), jwk(ec, "ES256")];
  fs.writeFileSync(KEY_FILE, JSON.stringify(keys), { mode: 0o600 });
  return keys;
}

const client = (clientId, extraRedirect) => ({
  client_id: clientId,
  token_endpoint_auth_method: "none", // a public client (a browser, a CLI): PKCE instead
  redirect_uris: extraRedirect ? [REDIRECT_URI, extraRedirect] : [REDIRECT_URI],
  grant_types: ["authorization_code"],
  response_types: ["code"],
});

const provider = new Provider(ISSUER, {
  clients: [client("kapflow-dashboard", DASHBOARD_REDIRECT_URI), client("short-lived"), client("es256")],
  jwks: { keys: signingKeys() },
  pkce: { required: () => true },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator, requestingClient) => ({
        scope: "kapflow",
        audience: resourceIndicator,
        // The "short-lived" client's tokens expire within seconds (the expiry test).
        accessTokenTTL: requestingClient.clientId === "short-lived" ? 2 : 600,
        accessTokenFormat: "jwt",
        // The "es256" client's tokens are signed with the P-256 key (ES256), the others RS256.
        jwt: { sign: { alg: requestingClient.clientId === "es256" ? "ES256" : "RS256" } },
      }),
    },
  },
  extraTokenClaims: async (ctx, token) =>
    token.kind === "AccessToken" && token.accountId ? { roles: ROLES[token.accountId] || [] } : undefined,
});
provider.proxy = false;

provider.listen(Number(PORT), "127.0.0.1", () => {
  process.stdout.write(`oidc-provider listening on ${ISSUER}\n`);
});
