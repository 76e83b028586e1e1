// A real OIDC identity provider for the tests: its own RSA key, discovery document and JWKS
// served over HTTP on a loopback port, and RS256 ID tokens signed with node:crypto.

import { generateKeyPairSync, type KeyObject, randomUUID, sign } from 'node:crypto';
import { createServer, type Server } from 'node:http';

export class IdentityProvider {
  readonly kid = randomUUID().slice(0, 12);
  readonly #key: KeyObject;
  readonly #public: KeyObject;
  #server: Server | undefined;
  issuer = '';

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.#key = privateKey;
    this.#public = publicKey;
  }

  static async start(): Promise<IdentityProvider> {
    const provider = new IdentityProvider();
    const server = createServer((request, response) => {
      let body: unknown;
      if (request.url === '/.well-known/openid-configuration') {
        body = {
          issuer: provider.issuer,
          jwks_uri: `${provider.issuer}/jwks`,
          id_token_signing_alg_values_supported: ['RS256'],
        };
      } else if (request.url === '/jwks') {
        const jwk = provider.#public.export({ format: 'jwk' });
        body = { keys: [{ ...jwk, kid: provider.kid, use: 'sig', alg: 'RS256' }] };
      } else {
        response.writeHead(404).end();
        return;
      }
      const data = JSON.stringify(body);
      response.writeHead(200, { 'Content-Type': 'application/json' }).end(data);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    provider.issuer = `http://127.0.0.1:${port}`;
    provider.#server = server;
    return provider;
  }

  idToken(subject: string, audience: string, claims: Record<string, unknown> = {}): string {
    const now = Math.floor(Date.now() / 1000);
    const encode = (value: unknown): string =>
      Buffer.from(JSON.stringify(value)).toString('base64url');
    const header = encode({ alg: 'RS256', kid: this.kid, typ: 'JWT' });
    const payload = encode({
      iss: this.issuer,
      sub: subject,
      aud: audience,
      iat: now,
      exp: now + 300,
      ...claims,
    });
    const signature = sign('sha256', Buffer.from(`${header}.${payload}`), this.#key);
    return `${header}.${payload}.${signature.toString('base64url')}`;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server?.closeAllConnections();
      this.#server?.close(() => resolve());
    });
  }
}
