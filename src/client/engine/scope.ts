/** Which scope each collection is held to here, and documents leaving it. */
import { parseScope, type Scope, type ScopeSelector } from '../../shared/scope.js';
import { requireReplicator, type EngineState } from './state.js';

/** The scope this device asks for in `collection` (null: everything the user may read). */
export function scopeOf(state: EngineState, collection: string): ScopeSelector | null {
  return state.wantScopes[collection] ?? null;
}

/** Whether `name` is pulled in a scope: this device asks for one, holds one, or the server set one. */
export function isScoped(state: EngineState, name: string): boolean {
  return scopeOf(state, name) !== null || state.ruledScopes.has(name) || requireReplicator(state).state.scopes?.[name] !== undefined;
}

/** The scope this collection's documents are held to here (during a move, the one it moves to). */
export function heldScopeOf(state: EngineState, name: string): Scope | undefined {
  const held = requireReplicator(state).state.scopes?.[name];
  if (!held) return scopeOf(state, name) === null ? undefined : parseScope(scopeOf(state, name));
  return parseScope(held.target !== undefined ? held.target : held.held);
}

/**
 * Whether a scoped collection has caught up past `seq` (its checkpoint, or
 * during a move the sequence its held scope is as of): a live message about
 * it that arrives now is late, and the pages that passed it told what
 * became of the document since. Applied, an in-scope version would stay
 * where the pages found the document out of the scope.
 */
export function caughtUpPast(state: EngineState, name: string, seq: number): boolean {
  const replicator = requireReplicator(state);
  const held = replicator.state.scopes?.[name];
  return held !== undefined && seq <= Math.max(replicator.state.checkpoints[name] ?? 0, held.through ?? 0);
}

/**
 * Before a document leaves a collection that has held no scope yet (its
 * first scoped pull has not ended): it holds one from now on, as of
 * nothing, so that it stays on scoped pulls, and the first brings the
 * whole scope. Else, asked for everything again, a plain pull from a
 * checkpoint the leave moved past would never bring the document back.
 */
export async function holdScopeBeforeLeaving(state: EngineState, name: string): Promise<void> {
  const replicator = requireReplicator(state);
  if (replicator.state.scopes?.[name] !== undefined) return;
  // As of nothing, from checkpoint 0: the server then sends the whole scope, and what is not in it leaves.
  // (Confirmations made so far stay: the scope aimed at is the same.)
  await replicator.restartScope(name, { held: scopeOf(state, name), through: 0 });
  state.heldSequences.clear();
}

/**
 * A pushed change that took a document out of this device's scope (a
 * todo given to another crew, say): once nothing of it waits to be
 * pushed, it leaves this device.
 */
export async function leaveIfOutside(state: EngineState, pushed: readonly { collection: string; documentId: string; seq?: number }[]): Promise<void> {
  const byCollection = new Map<string, { ids: string[]; seqs: number[] }>();
  for (const { collection, documentId, seq } of pushed) {
    if (heldScopeOf(state, collection) === undefined) continue;
    const group = byCollection.get(collection) ?? { ids: [], seqs: [] };
    group.ids.push(documentId);
    // Unknown (a settled conflict): nothing is remembered against a late older version.
    group.seqs.push(seq ?? -1);
    byCollection.set(collection, group);
  }
  for (const [collection, { ids, seqs }] of byCollection) {
    const scope = heldScopeOf(state, collection)!;
    await holdScopeBeforeLeaving(state, collection);
    await requireReplicator(state).leaveScope(collection, ids, scope, seqs);
  }
}
