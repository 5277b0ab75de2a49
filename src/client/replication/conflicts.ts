/**
 * Conflicts: a document whose local change the server does not have on top
 * of its head. The strategy decides; the pure functions at the end say what
 * each decision leaves, and the steps write it.
 */
import { randomId } from '../../shared/ids.js';
import { SyncError } from '../../shared/errors.js';
import { compareHlc } from '../../shared/hlc.js';
import type { SyncEvent } from '../../shared/protocol/index.js';
import { buildChange, hasData, localState, restatement, statesEqual, versionOf, type DocState, type PendingEntry, type Shadow } from '../documents.js';
import type { MetaWrite } from '../meta-store.js';
import { ordersByClock } from '../strategies/index.js';
import type { DocumentVersion, Resolution } from '../strategies/types.js';
import { isWaitingForUpload } from './attachments.js';
import { collectionOf, findLocal, writeLocal } from './collections.js';
import { getShadows, serverVersions, shadowDelete, shadowWrite } from './shadows.js';
import type { ReplicationState, Steps, StoredConflict } from './state.js';

export type ConflictResolutionChoice = 'keep-local' | 'keep-remote' | { data: Record<string, unknown> };

const conflictId = (collection: string, documentId: string) => `conflict|${collection}|${documentId}`;
const MAX_RESOLVE_ATTEMPTS = 5;

/** True while a manual conflict holds this document back from pushing. */
export function isHeld(state: ReplicationState, entry: PendingEntry): boolean {
  return state.conflicts.has(conflictId(entry.event.collection, entry.event.documentId)) || isWaitingForUpload(state, entry);
}

/**
 * Settles a document whose local change the server does not have on top of
 * `remote` (the server's head; null when the server holds no version).
 * The configured strategy decides; the result is written locally and, if it
 * differs from the server's version, pushed as a new event based on it.
 */
export async function resolveDocument(
  state: ReplicationState,
  steps: Steps,
  collectionName: string,
  documentId: string,
  remote: Shadow | null,
  attempt = 0,
): Promise<void> {
  const collection = collectionOf(state, collectionName);
  const entries = state.pending.forDocument(collectionName, documentId);
  const writes: MetaWrite[] = [];
  if (remote) {
    // The server's head is one of our own events (its history was compacted away): it was accepted.
    const ownIndex = entries.findIndex((entry) => entry.event.id === remote.eventId);
    if (ownIndex >= 0) {
      for (const entry of entries.slice(0, ownIndex + 1)) writes.push(state.pending.remove(entry));
      writes.push(...shadowWrite(state, collectionName, documentId, remote));
      await state.meta.write(writes);
      await steps.recordLocalChanges(collectionName, [documentId]);
      return;
    }
  }
  // The app may have written again since the pushed event was logged: log that first,
  // so the local side of the conflict carries its real data and its own clock.
  await steps.recordLocalChanges(collectionName, [documentId]);
  const latestEntries = state.pending.forDocument(collectionName, documentId);
  const currents = await findLocal(collection, [documentId]);
  const current = currents.get(documentId);
  const local = localState(current);
  const known = (await serverVersions(state, collectionName, [documentId], currents)).get(documentId);
  // A base whose content was lost to a crash is no base: the strategies then compare the two sides alone.
  const base = known && hasData(known) ? known : null;
  const lastEntry = latestEntries[latestEntries.length - 1];
  // The document's log entries give way to the server's version. Collected (and so changed in
  // memory) only once the outcome is certain: a round that the app's own write interrupts
  // leaves the log and the known server version as they were for the next round.
  const settle = () => [
    ...state.pending.removeDocument(collectionName, documentId),
    ...(remote ? shadowWrite(state, collectionName, documentId, remote) : shadowDelete(state, collectionName, documentId)),
  ];
  if (statesEqual(local, remote)) {
    writes.push(...settle());
    // The same state on both sides, but written here later than the server's version: under a
    // strategy that orders writes by clock, said again on top of it with this client's clock.
    // Dropped, it would leave the server's older clock on the document, and a write made elsewhere
    // in between (earlier, but reaching the server later) would stand over it, though this one was
    // the last. (The other strategies drop the local side here: the server's version stands as it
    // is, and a later write made on it meets no conflict of this client's making.)
    const localHlc = lastEntry?.event.hlc;
    const restate = remote && localHlc && ordersByClock(state.strategyFor(collectionName)) && compareHlc(localHlc, remote.hlc) > 0;
    const restated = restate ? restatement(local) : null;
    if (restated) writes.push(logNew(state, collectionName, documentId, restated, remote, localHlc!));
    await state.meta.write(writes);
    return;
  }
  const localVersion: DocumentVersion = {
    data: local?.data ?? lastEntry?.event.data ?? {},
    deleted: !local || local.deleted,
    hlc: lastEntry?.event.hlc ?? state.clock.tick(),
    clientId: state.persisted.clientId,
  };
  const conflict = { collection: collectionName, documentId, local: localVersion, remote: versionOf(remote), base: versionOf(base) };
  const resolution = await state.strategyFor(collectionName)(conflict);

  if (resolution.action === 'manual') {
    const stored: StoredConflict = { id: conflictId(collectionName, documentId), ...conflict, detectedAt: Date.now(), ...(resolution.reason ? { reason: resolution.reason } : {}) };
    state.conflicts.set(stored.id, stored);
    writes.push(...settle(), { id: stored.id, kind: 'conflict', value: { ...stored, remoteShadow: remote } });
    await state.meta.write(writes);
    state.logger.info({ collection: collectionName, documentId, reason: resolution.reason }, 'conflict kept for the app to resolve');
    state.conflicts$.next([...state.conflicts.values()]);
    return;
  }
  const target = resolvedState(resolution, localVersion, remote);
  if (!statesEqual(target, local)) {
    const refused = await writeLocal(state, collection, [{ documentId, current, target }]);
    if (refused.has(documentId)) {
      // The app wrote the document meanwhile: log that write and settle again.
      if (attempt >= MAX_RESOLVE_ATTEMPTS) throw new SyncError('INTERNAL', `document ${collectionName}/${documentId} keeps changing during conflict resolution`);
      await steps.recordLocalChanges(collectionName, [documentId]);
      return steps.resolveDocument(collectionName, documentId, remote, attempt + 1);
    }
  }
  writes.push(...settle());
  const change = buildChange(remote, target);
  if (change) writes.push(logNew(state, collectionName, documentId, change, remote, resolvedClock(resolution, localVersion, remote)));
  await state.meta.write(writes);
}

/** Settles a kept conflict the way the app chose. */
export async function resolveConflict(state: ReplicationState, id: string, choice: ConflictResolutionChoice): Promise<void> {
  const conflict = state.conflicts.get(id);
  if (!conflict) throw new SyncError('INVALID_OPTION', `no open conflict with id "${id}"`);
  const { collection: collectionName, documentId } = conflict;
  const collection = collectionOf(state, collectionName);
  const currents = await findLocal(collection, [documentId]);
  const current = currents.get(documentId);
  // resolveDocument kept the server's version as a shadow when it stored the conflict.
  const remote = (await getShadows(state, collectionName, [documentId])).get(documentId) ?? null;
  const target = chosenState(choice, conflict, remote, localState(current));
  const refused = await writeLocal(state, collection, [{ documentId, current, target }]);
  if (refused.has(documentId)) throw new SyncError('INTERNAL', `document ${collectionName}/${documentId} changed while resolving its conflict; try again`);
  const writes: MetaWrite[] = [...state.pending.removeDocument(collectionName, documentId), { id, kind: 'conflict' }];
  const change = buildChange(remote, target);
  if (change) {
    // The app's decision is a new write, made now.
    writes.push(logNew(state, collectionName, documentId, change, remote, state.clock.tick()));
  }
  state.conflicts.delete(id);
  await state.meta.write(writes);
  state.conflicts$.next([...state.conflicts.values()]);
}

/** Logs a change the plugin made itself (a settled conflict) as a new event on `remote`. */
function logNew(state: ReplicationState, collectionName: string, documentId: string, change: Pick<SyncEvent, 'op' | 'data' | 'patch'>, remote: Shadow | null, hlc: string): MetaWrite {
  const event: SyncEvent = Object.assign({ id: randomId(), collection: collectionName, documentId }, change, { baseEventId: remote?.eventId ?? null, hlc });
  return state.pending.add({ key: state.pending.nextKey(), event, sent: false });
}

// ---- deciding ----------------------------------------------------------------------

/** The state a strategy's resolution leaves the document in. */
function resolvedState(resolution: Exclude<Resolution, { action: 'manual' }>, local: DocumentVersion, remote: Shadow | null): DocState {
  switch (resolution.action) {
    case 'keep-remote':
      return remote ?? { data: local.data, deleted: true };
    case 'keep-local':
      return { data: local.data, deleted: local.deleted };
    case 'write':
      return { data: resolution.data, deleted: false };
    case 'delete':
      return { data: local.data, deleted: true };
  }
}

/**
 * The clock of the change that settles a conflict. A rebased local write
 * keeps its own time, so it cannot beat a later write made elsewhere; a
 * merged result is as recent as the later of its two sides.
 */
function resolvedClock(resolution: Exclude<Resolution, { action: 'manual' }>, local: DocumentVersion, remote: Shadow | null): string {
  if (resolution.action === 'keep-local' || !remote) return local.hlc;
  return compareHlc(local.hlc, remote.hlc) > 0 ? local.hlc : remote.hlc;
}

/** The state the app's choice leaves a kept conflict's document in. */
function chosenState(choice: ConflictResolutionChoice, conflict: StoredConflict, remote: Shadow | null, current: DocState | null): DocState {
  if (choice === 'keep-remote') return remote ?? { data: conflict.local.data, deleted: true };
  if (choice === 'keep-local') return current ?? { data: conflict.local.data, deleted: true };
  return { data: choice.data, deleted: false };
}
