export {
  CredentialRejected,
  type Denial,
  StreamsDenied,
  TokenExpired,
  TokenSourceError,
  type TokenSourceErrorOptions,
} from './errors.js';
export { identityOf } from './identity.js';
export {
  type Credential,
  type Grant,
  MAX_DELAY_MS,
  RETRYABLE,
  type SyncToken,
  SyncTokenSource,
  TOKEN_PATH,
  type TokenResponse,
  type TokenSourceOptions,
} from './tokenSource.js';
