import type { JsonObject } from '../../shared/json.js';

/** One side of a conflict. */
export interface DocumentVersion {
  data: JsonObject;
  deleted: boolean;
  /** Hybrid logical clock of the write that produced this version. */
  hlc: string;
  clientId: string;
}

export interface Conflict {
  collection: string;
  documentId: string;
  /** This client's change that the server has not accepted. */
  local: DocumentVersion;
  /** The server's current version; null when the server holds no version of the document. */
  remote: DocumentVersion | null;
  /** The last version both sides agreed on; null when the document was new on both. */
  base: DocumentVersion | null;
}

/** What a strategy decides. `write` replaces the document (and is pushed), `delete` deletes it. */
export type Resolution =
  | { action: 'keep-remote' }
  | { action: 'keep-local' }
  | { action: 'write'; data: JsonObject }
  | { action: 'delete' }
  | { action: 'manual'; reason?: string };

export type Strategy = (conflict: Conflict) => Resolution | Promise<Resolution>;

/**
 * An application's own strategy: returns the document to keep, null to
 * delete it, or `'manual'` to leave this conflict to the app's user (kept,
 * listed and settled as under the `manual` strategy). A throw makes the
 * conflict manual too, with CONFLICT_RESOLVER_FAILED in the status.
 */
export type ConflictResolver = (conflict: Conflict) => JsonObject | null | 'manual' | Promise<JsonObject | null | 'manual'>;

export const STRATEGY_NAMES = ['last-write-wins', 'server-wins', 'client-wins', 'merge', 'manual'] as const;
export type StrategyName = (typeof STRATEGY_NAMES)[number];
