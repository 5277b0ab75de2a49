/** Sync errors in words a field crew reads: what happened and what becomes of their changes. The code stays for the detail. */
import type { SyncError } from 'rxdb-offline-sync';

const PLAIN: Record<string, string> = {
  NOT_CONNECTED: "Can't reach the server — changes are kept on this device and will sync when you're back online.",
  TIMEOUT: 'The server is slow to answer — trying again. Nothing is lost.',
  UNAUTHENTICATED: "The server didn't accept your sign-in — trying again with a fresh one.",
  TOKEN_EXPIRED: 'Your sign-in ran out — renewing it. Changes are kept meanwhile.',
  UNAUTHORIZED: "The server refused a change you aren't allowed to make. It stays on this device only.",
  AUTHORIZATION_FAILED: "The server couldn't check what you may do — trying again.",
  RATE_LIMITED: 'The server is busy — trying again shortly.',
  SERVER_BUSY: 'The server is busy — trying again shortly.',
  TOO_MANY_CONNECTIONS: 'The server is busy — trying again shortly.',
  TOO_MANY_REQUESTS: 'The server is busy — trying again shortly.',
  STORAGE_ERROR: "The server couldn't save changes just now — trying again. Nothing is lost.",
  PAYLOAD_TOO_LARGE: 'A change is too large for the server to take.',
  ATTACHMENT_TOO_LARGE: 'A photo is too large for the server to take.',
  ATTACHMENT_MISSING: "A photo hasn't reached the server yet — it will be sent again.",
  CLOCK_DRIFT: "This device's clock is far off — set the date and time, then sync again.",
  SCHEMA_VIOLATION: "The server refused a change that doesn't fit its rules.",
  UNSUPPORTED_PROTOCOL: 'This app is older than the server — reload to update it.',
  DISABLED: 'Sync is paused ("Work offline" is on).',
  CLOSED: 'Sync has stopped. Reload the page to start it again.',
  CONFLICT_RESOLVER_FAILED: 'A todo was changed on two devices and could not be settled on its own — choose which version to keep.',
};

export function plainWords(error: Pick<SyncError, 'code'>): string {
  return PLAIN[error.code] ?? 'Sync ran into a problem — it will try again. Your changes are kept on this device.';
}

export const count = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
