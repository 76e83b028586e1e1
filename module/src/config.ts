// The module's configuration defaults. `init` copies them into the private `sync_config` row;
// the database owner changes them afterwards with the `configure` reducer (docs/spacetimedb.md).
//
// Pure code: no import from `spacetimedb`.

export interface ModuleConfig {
  /** `iss` every sync token must carry, exactly: the control plane's `CONTROL_ISSUER`. */
  readonly issuer: string;
  /** `aud` every sync token must carry (or list): the control plane's `CONTROL_AUDIENCE`. */
  readonly audience: string;
  /** Hex Identity allowed to call `revoke_subject` / `revoke_jti`; `""` means nobody yet. */
  readonly controlPlaneIdentity: string;
  /** Seconds of clock skew tolerated on `exp`, `nbf`, `iat` at connect. */
  readonly leewaySeconds: number;
}

/** The control plane's development defaults (`CONTROL_ISSUER`, `CONTROL_AUDIENCE`). A real
 * deployment calls `configure` right after the first publish. */
export const DEFAULT_CONFIG: ModuleConfig = {
  issuer: 'http://127.0.0.1:8080',
  audience: 'spacetimedb',
  controlPlaneIdentity: '',
  leewaySeconds: 0,
};

/** How often the scheduled `sweep_expired` reducer deletes grant rows whose token has expired. */
export const SWEEP_INTERVAL_SECONDS = 5;

/** Largest payload `append` and `checkpoint` accept, in UTF-16 code units. */
export const MAX_PAYLOAD_LENGTH = 64 * 1024;

/** Longest issuer / audience `configure` accepts (`iss` is at most 128 bytes for SpacetimeDB). */
export const MAX_CONFIG_STRING_LENGTH = 256;

const IDENTITY_HEX = /^(0x)?[0-9a-fA-F]{64}$/;

/** Check `configure`'s arguments; returns an error message or null. */
export function configProblem(config: ModuleConfig): string | null {
  if (config.issuer === '' || config.issuer.length > MAX_CONFIG_STRING_LENGTH) {
    return 'issuer must be a non-empty string of at most 256 characters';
  }
  if (config.issuer.endsWith('/')) {
    return 'issuer must not end with "/" (the Identity SpacetimeDB derives depends on the exact string)';
  }
  if (config.audience === '' || config.audience.length > MAX_CONFIG_STRING_LENGTH) {
    return 'audience must be a non-empty string of at most 256 characters';
  }
  if (config.controlPlaneIdentity !== '' && !IDENTITY_HEX.test(config.controlPlaneIdentity)) {
    return 'control_plane_identity must be 64 hex characters (or "" for none)';
  }
  if (
    !Number.isInteger(config.leewaySeconds) ||
    config.leewaySeconds < 0 ||
    config.leewaySeconds > 300
  ) {
    return 'leeway_seconds must be an integer from 0 to 300';
  }
  return null;
}
