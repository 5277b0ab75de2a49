/**
 * Scoped pulls: pages of the changes in a collection's scope, moves from one
 * scope to another, and the catch-up of a scope held as of nothing, which
 * confirms each document it keeps.
 */
import { SyncError } from '../../shared/errors.js';
import { intersectScopes, parseScope, sameScope, scopeImplies, toSelector, type Scope } from '../../shared/scope.js';
import type { HeldScope } from '../replicator.js';
import type { Transport } from '../transport.js';
import { checkPage, pullPage } from './pull.js';
import { isScoped, scopeOf } from './scope.js';
import { requireReplicator, type EngineState } from './state.js';
import { changeOf } from './status.js';
import { noteLiveScope } from './subscription.js';

/**
 * Pulls one scoped collection. The server answers with the scope it
 * applies (this device's, within its rule for the user). While that is
 * the scope held here, pages bring the changes in it and the documents
 * that left it. When it is another, the move starts: documents outside
 * the new scope leave (those with unpushed changes once pushed), and the
 * collection pulls again from 0, naming what it held and when, so that
 * only the documents that came into the scope are sent.
 */
export async function pullScoped(state: EngineState, transport: Transport, name: string): Promise<number> {
  const replicator = requireReplicator(state);
  let synced = 0;
  // A collection that held everything until now holds everything as of its checkpoint; one that
  // holds nothing yet holds its scope as of nothing, from now on (saved with its first page).
  const start = replicator.state.checkpoints[name] ?? 0;
  const unscoped: HeldScope = { held: null, through: start };
  if (start === 0 && replicator.state.scopes?.[name] === undefined) replicator.state.scopes = { ...replicator.state.scopes, [name]: { held: scopeOf(state, name), through: 0 } };
  for (;;) {
    const checkpoint = replicator.state.checkpoints[name] ?? 0;
    const heldScope: HeldScope = replicator.state.scopes?.[name] ?? unscoped;
    const first = (heldScope.through ?? checkpoint) === 0;
    if (first && checkpoint > 0 && !state.confirming.has(name)) {
      // Its confirmations are gone (the app restarted, or another tab led): the catch-up starts again.
      await state.queue.run(() => replicator.restartScope(name, heldScope));
      continue;
    }
    const restarts = replicator.scopeRestarts(name);
    const basis = state.liveBasis;
    // `through` stays where the last whole catch-up ended until this one ends: a document that left
    // the scope between two pages still gets its leave (see SyncStorage.getScopedChanges).
    const reply = await pullPage(state, transport, {
      checkpoint,
      collections: [name],
      limit: state.options.pullBatchSize,
      scope: { want: scopeOf(state, name), held: heldScope.held, through: heldScope.through ?? checkpoint, ...startOf(state, name, first && checkpoint > 0) },
      // Held as of nothing, every document is confirmed by its row: none is left out for being held already.
    }, !first);
    if (!state.status$.value.enabled) throw new SyncError('DISABLED', 'sync was disabled during the pull');
    if (!reply.scopes || !Object.hasOwn(reply.scopes, name)) throw new SyncError('INVALID_MESSAGE', `server answered a scoped pull of "${name}" without its scope`);
    checkPage(reply, [name], checkpoint);
    const scope = parseScope(reply.scopes[name] ?? null, `the server's scope for ${name}`);
    // The server's live delivery follows the scope a scoped pull finds.
    noteLiveScope(basis, name, reply.scopes[name] ?? null);
    const aim = parseScope(heldScope.target !== undefined ? heldScope.target : heldScope.held);
    if (!sameScope(scope, aim)) {
      // Another scope: the move to it starts.
      const restart = moveTo(heldScope, scope, first ? 0 : checkpoint);
      await state.queue.run(async () => {
        // Restarted meanwhile (a leave that came live): what is held is another state; look again.
        if (replicator.scopeRestarts(name) !== restarts) return;
        state.confirming.delete(name);
        state.logger.info({ collection: name, scope: toSelector(scope) }, 'the sync scope changed; moving to it');
        // Widened (every document held matches the new scope): nothing can leave, and nothing is read to find out.
        if (heldScope.target !== undefined || !scopeImplies(parseScope(heldScope.held), scope)) await replicator.leaveScope(name, undefined, scope);
        await replicator.restartScope(name, restart);
        // A sequence held here may be of a document that just left: named in `have`, it would not come back.
        state.heldSequences.clear();
      });
      continue;
    }
    const done = !reply.hasMore;
    // Held as of nothing (a first scoped pull, or a move that changed course): what this device has
    // outside the scope (its own writes, or what it held before) leaves once the whole scope is here.
    // Every document this catch-up brings (or a live message, or an acknowledged push, meanwhile) is
    // confirmed (see confirm), and at its end what was not confirmed leaves.
    const applied = await state.queue.run(async () => {
      // Restarted meanwhile (a leave that came live): this page answers for a state no longer held.
      if (replicator.scopeRestarts(name) !== restarts) return undefined;
      if (first && !state.confirming.has(name)) state.confirming.set(name, { documents: new Map() });
      if (first && checkpoint === 0 && reply.start !== undefined) {
        const catchUp = state.confirming.get(name)!;
        catchUp.start = reply.start;
        // Confirmed live or by a push before the catch-up began: a page sends it again if it is in the scope.
        for (const [documentId, seq] of catchUp.documents) if (seq <= reply.start) catchUp.documents.delete(documentId);
      }
      confirmPage(state, name, reply.events);
      // A first page from 0 names no leaves (nothing was sent yet): a version confirmed before it that
      // it read past and did not send is no longer in the scope (sent or left later, when it moved on).
      if (first && checkpoint === 0) {
        const sent = new Set(reply.events.map((event) => event.documentId));
        const confirmed = state.confirming.get(name)?.documents;
        for (const [documentId, seq] of confirmed ?? []) if (seq <= reply.checkpoint && !sent.has(documentId)) confirmed!.delete(documentId);
      }
      // Saved with the checkpoint the page moves: a move ends with its last page.
      if (done) replicator.state.scopes = { ...replicator.state.scopes, [name]: { held: toSelector(scope), through: reply.checkpoint } };
      const written = await replicator.applyRemote(reply.events, 'pull', { collections: [name], seq: reply.checkpoint });
      if (reply.events.length > 0) state.received$.next(reply.events.map(changeOf));
      const leaving = (reply.leaves ?? []).map(([documentId, seq]) => ({ documentId, seq }));
      let left = leaving.length > 0 ? await replicator.leaveAt(name, leaving, scope) : 0;
      if (done && first) {
        const confirmed = state.confirming.get(name)?.documents ?? new Map<string, number>();
        state.confirming.delete(name);
        left += await replicator.leaveScope(name, undefined, scope, undefined, confirmed);
      }
      return written + left;
    });
    if (applied === undefined) continue;
    synced += applied;
    for (const [, seq] of reply.leaves ?? []) state.heldSequences.add(seq);
    if (done) return synced;
  }
}

/**
 * The scope a collection holds once it starts to move from `heldScope` to
 * `scope`, as of `through`: documents outside the new scope leave, and the
 * difference is pulled from 0. A move that changes course holds no known
 * scope any more: the new one is pulled whole.
 */
export function moveTo(heldScope: HeldScope, scope: Scope, through: number): HeldScope {
  // Mid-move, what is held is the old scope within the one it was moving to, as of the same sequence.
  return heldScope.target === undefined
    ? { held: heldScope.held, through, target: toSelector(scope) }
    : { held: toSelector(intersectScopes(parseScope(heldScope.held), parseScope(heldScope.target))), through: heldScope.through ?? 0, target: toSelector(scope) };
}

/** Whether `name` holds its scope as of nothing: its catch-up confirms each document it keeps (see pullScoped). */
function pullsAsOfNothing(state: EngineState, name: string): boolean {
  const replicator = requireReplicator(state);
  const checkpoint = replicator.state.checkpoints[name] ?? 0;
  const held = replicator.state.scopes?.[name];
  return held ? (held.through ?? checkpoint) === 0 : checkpoint === 0 && isScoped(state, name);
}

/**
 * A server version of `documentId` in the scope aimed at is held here now
 * (from a page, a live message or an acknowledged push): while the
 * collection holds its scope as of nothing, that confirms the document,
 * which the end of the catch-up keeps.
 */
export function confirm(state: EngineState, name: string, documentId: string, seq: number, byPage = false): void {
  if (!state.collections.has(name) || !pullsAsOfNothing(state, name)) return;
  // A version from before the catch-up began, not sent by one of its pages: a later version at or before
  // that start (out of the scope) would be no leave, so only a page confirms it (see ScopedQuery.start).
  const running = state.confirming.get(name);
  if (!byPage && seq <= (running?.start ?? 0)) return;
  // Past 0 without them, the confirmations of its pages are gone: the catch-up starts again (see pullScoped).
  const catchUp = running ?? ((requireReplicator(state).state.checkpoints[name] ?? 0) === 0 ? { documents: new Map<string, number>() } : undefined);
  if (!catchUp) return;
  catchUp.documents.set(documentId, Math.max(seq, catchUp.documents.get(documentId) ?? 0));
  state.confirming.set(name, catchUp);
}

/** confirm() for every event of a page, judged once for the page (a page of a first sync holds thousands). */
function confirmPage(state: EngineState, name: string, events: readonly { documentId: string; seq: number }[]): void {
  const first = events[0];
  if (!first || !state.collections.has(name) || !pullsAsOfNothing(state, name)) return;
  // The first as confirm() takes any: it starts the catch-up's record when there is none.
  confirm(state, name, first.documentId, first.seq, true);
  const documents = state.confirming.get(name)?.documents;
  if (!documents) return;
  for (const { documentId, seq } of events) documents.set(documentId, Math.max(seq, documents.get(documentId) ?? 0));
}

/** `start` for a scoped pull's message: the catch-up's, on every page after its first. */
function startOf(state: EngineState, name: string, later: boolean): { start?: number } {
  const start = state.confirming.get(name)?.start;
  return later && start !== undefined ? { start } : {};
}
