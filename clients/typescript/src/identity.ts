// SpacetimeDB's Identity for a token, computed exactly as SpacetimeDB (and the control plane's
// `spacetimedb_identity`) does:
//   h = blake3("{iss}|{sub}")[0..26]; c = blake3(0xC2 0x00 || h)[0..4]; Identity = C2 00 || c || h
// shown as 64 hex characters starting `c200`.

import { blake3 } from '@noble/hashes/blake3.js';

const PREFIX = Uint8Array.of(0xc2, 0x00);

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((length, part) => length + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/** The Identity (64 hex characters) SpacetimeDB gives a connection whose token has `iss`
 * `issuer` and `sub` `subject`. */
export function identityOf(issuer: string, subject: string): string {
  const hashed = blake3(new TextEncoder().encode(`${issuer}|${subject}`)).subarray(0, 26);
  const checksum = blake3(concat(PREFIX, hashed)).subarray(0, 4);
  return hex(concat(PREFIX, checksum, hashed));
}
