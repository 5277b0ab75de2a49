/**
 * The live subscription of a connection, and the scopes the server may
 * judge its live messages in.
 */
import { parseScope, scopeKey, type Scope } from '../../shared/scope.js';
import type { Transport } from '../transport.js';
import { scopeOf } from './scope.js';
import type { EngineState, LiveBasis } from './state.js';

/** A subscription a run sent and has not waited for yet: it waits once, before it writes a page, and then clears it. */
export interface PendingSubscription {
  promise?: Promise<void>;
}

/** The subscription must be made again (a disconnect, a collection added or removed, a scope set). */
export function resubscribe(state: EngineState): void {
  state.subscribed = false;
  state.subscriptionEpoch++;
}

/** Subscribes to the live messages of every collection synced, each in the scope this device asks for. */
export function subscribe(state: EngineState, transport: Transport): Promise<void> {
  const epoch = state.subscriptionEpoch;
  const scopes = Object.fromEntries([...state.collections].filter((name) => scopeOf(state, name) !== null).map((name) => [name, scopeOf(state, name)]));
  // Unanswered, it may have been taken all the same, in a scope not known here: `asking` then stays up.
  const basis = state.liveBasis;
  basis.asking++;
  const subscribing = transport.subscribe({ collections: [...state.collections], ...(Object.keys(scopes).length > 0 ? { scopes } : {}) }).then((reply) => {
    basis.asking--;
    for (const name of reply.collections) noteLiveScope(basis, name, reply.scopes?.[name] ?? null);
    // Not if the connection dropped or the collections changed since it was sent: then it is made again.
    if (state.subscriptionEpoch === epoch) state.subscribed = true;
  });
  // Handled from the start; its failure ends the run, before any page is written.
  subscribing.catch(() => undefined);
  return subscribing;
}

/** Notes a scope the server may judge this connection's live messages in (a subscription's or a scoped pull's answer). */
export function noteLiveScope(basis: LiveBasis, collection: string, selector: unknown): void {
  const seen = basis.scopes.get(collection) ?? new Set<string>();
  seen.add(scopeKey(parseScope(selector)));
  basis.scopes.set(collection, seen);
}

/**
 * Whether the server judges this connection's live messages in `collection`
 * in `scope`: every subscription made on it has been answered, and each
 * answer (and each scoped pull's) named that scope. Live delivery reads a
 * socket's scope before it sends, so a message can be judged in the scope
 * of an earlier subscription on the same connection, even after the
 * answer to a later one.
 */
export function judgesIn(basis: LiveBasis, collection: string, scope: Scope): boolean {
  const seen = basis.scopes.get(collection);
  return basis.asking === 0 && seen !== undefined && seen.size === 1 && seen.has(scopeKey(scope));
}
