// A real OpenID provider on loopback for the identity tests: node-oidc-provider with its development
// login and consent pages, dynamic client registration, RFC 8707 resource indicators issuing JWT access
// tokens bound to the requested resource, refresh tokens and revocation.
//
//   node tests/oidc_op.mjs PORT NODE_MODULES   prints "listening ISSUER" once it serves
// (NODE_MODULES: where `npm install --prefix` put oidc-provider; ES modules do not read NODE_PATH)
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const { default: Provider } = await import(pathToFileURL(join(process.argv[3], "oidc-provider", "lib", "index.js")));

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const accessTokenTTL = Number(process.env.OP_ACCESS_TOKEN_TTL || 600);
// OP_CLIENT_METADATA_DOCUMENTS=1: clients named by a client ID metadata document, which the tests serve
// on loopback (NODE_EXTRA_CA_CERTS trusts its certificate). The provider refuses to fetch from
// special-use addresses, loopback among them; here loopback is the only network there is.
const clientMetadataDocuments = process.env.OP_CLIENT_METADATA_DOCUMENTS === "1";

const provider = new Provider(issuer, {
  clients: [],
  scopes: ["openid", "offline_access", "mcp"],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    clientIdMetadataDocument: { enabled: clientMetadataDocuments, ack: "draft-02" },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: "mcp",
        audience: resourceIndicator,
        accessTokenTTL,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  // a refresh token for every client allowed the grant, not only with offline_access
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed("refresh_token"),
  extraTokenClaims: async () => ({ groups: ["support"] }),
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  pkce: { required: () => true },
  ttl: { AccessToken: accessTokenTTL, ClientCredentials: accessTokenTTL },
  ...(clientMetadataDocuments ? { fetch: (url, { dispatcher, ...options }) => fetch(url, options) } : {}),
});
provider.proxy = false;
// Development warnings (dev keys, dev interactions) are expected here.
process.removeAllListeners("warning");
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.listen(port, "127.0.0.1", () => console.log(`listening ${issuer}`));
