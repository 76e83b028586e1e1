// The errors a token source raises: one base class, and a subclass for each case a caller acts
// on differently (fix the credential, fix the request, or wait for the control plane).

export interface Denial {
  stream: string;
  reason: string;
}

export interface TokenSourceErrorOptions {
  status?: number | undefined;
  code?: string | undefined;
  cause?: unknown;
}

/** A token could not be had; `status` and `code` come from the problem response. */
export class TokenSourceError extends Error {
  readonly status: number | undefined;
  readonly code: string | undefined;

  constructor(message: string, options: TokenSourceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code;
  }
}

/** 401: the API key or ID token is unknown, revoked, expired, or its principal is disabled. */
export class CredentialRejected extends TokenSourceError {}

/** 403: policy does not grant what was asked for; `denied` says what and why. */
export class StreamsDenied extends TokenSourceError {
  readonly denied: Denial[];

  constructor(message: string, denied: Denial[], options: TokenSourceErrorOptions = {}) {
    super(message, { ...options, status: 403 });
    this.denied = denied;
  }
}

/**
 * The token has expired (or is within `expiryMarginMs` of it) and refreshing it keeps failing.
 * `cause` is the last failure; `status` and `code` are its own.
 */
export class TokenExpired extends TokenSourceError {}
