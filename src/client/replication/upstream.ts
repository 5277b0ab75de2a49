/** Local changes out to the server: batches, the server's answers, refusals. */
import type { RxDocumentData } from 'rxdb';
import { DocumentMap } from '../../shared/document-map.js';
import type { WireError } from '../../shared/errors.js';
import type { DocumentHead, PushOutcome } from '../../shared/protocol/index.js';
import { hasData, localState, shadowFromHead, type KnownVersion, type PendingEntry, type Shadow } from '../documents.js';
import type { MetaWrite } from '../meta-store.js';
import { isHeld } from './conflicts.js';
import { collectionOf, findLocal, writeLocal, type LocalWrite } from './collections.js';
import { serverVersions, shadowWrite } from './shadows.js';
import { stateWrite, type RejectedEvent, type ReplicationState, type Steps } from './state.js';

/** Acknowledged batches up to this size keep their shadows at once; larger ones as a page, folded when idle. */
export const SHADOWS_AT_ONCE = 32;

/** The next batch to push, marked sent durably before it leaves (a sent event is never changed again). */
export async function takeBatch(state: ReplicationState, limit: number, maxBytes?: number): Promise<PendingEntry[]> {
  const batch = state.pending.head(limit, (entry) => isHeld(state, entry), maxBytes);
  if (state.pending.markSent(batch)) {
    state.persisted.sentThrough = state.pending.sentThrough;
    await state.meta.write([stateWrite(state)]);
  }
  return batch;
}

/**
 * Settles a pushed batch by the server's answers, one per event, in order
 * (Transport.push refuses an answer that does not match its events).
 * Returns the acknowledged versions: each document's sequence, for the
 * entries the server took.
 */
export async function applyPushResults(
  state: ReplicationState,
  steps: Steps,
  batch: readonly PendingEntry[],
  outcomes: readonly PushOutcome[],
): Promise<{ collection: string; documentId: string; seq: number }[]> {
  const { acked, conflicts, rejected } = sortOutcomes(batch, outcomes, state.persisted.clientId);
  const writes: MetaWrite[] = acked.map(({ entry }) => state.pending.remove(entry));
  const versions = acked.map(({ entry, version }): [string, string, Shadow] => [entry.event.collection, entry.event.documentId, version]);
  if (versions.length <= SHADOWS_AT_ONCE) {
    // A few documents (an app editing one at a time): their shadows straight away, no page to fold later.
    for (const [collection, documentId, version] of versions) writes.push(...shadowWrite(state, collection, documentId, version));
  } else {
    // One page for the whole batch, named after its first acknowledged entry: that entry leaves
    // the log in this same write, so no later batch can start with it (keys are never reused).
    writes.push(state.acked.add(`acked|${acked[0]!.entry.key}`, versions));
  }
  if (writes.length > 0) await state.meta.write(writes);
  for (const { entry, error } of rejected) await reject(state, entry, error);
  for (const { entry, head } of conflicts) {
    await steps.resolveDocument(entry.event.collection, entry.event.documentId, head ? shadowFromHead(head) : null);
  }
  // Only these: an answer after a refused or conflicting event of the same document was not taken here.
  return versions.map(([collection, documentId, version]) => ({ collection, documentId, seq: version.seq }));
}

/** The server refused the change: it is not retried, the document returns to the server's version. */
export async function reject(state: ReplicationState, entry: PendingEntry, error: WireError): Promise<void> {
  const { collection: collectionName, documentId } = entry.event;
  const record: RejectedEvent = { id: entry.event.id, collection: collectionName, documentId, event: entry.event, error, rejectedAt: Date.now() };
  state.rejected.push(record);
  state.logger.warn({ collection: collectionName, documentId, code: error.code, reason: error.message }, 'server rejected a local change');
  const collection = collectionOf(state, collectionName);
  const currents = await findLocal(collection, [documentId]);
  const current = currents.get(documentId);
  const server = (await serverVersions(state, collectionName, [documentId], currents)).get(documentId) ?? null;
  const revert = revertRow(state, collectionName, documentId, current, server, entry.event.data);
  if (revert) await writeLocal(state, collection, [revert]);
  await state.meta.write([
    ...state.pending.removeDocument(collectionName, documentId),
    { id: `rejected|${record.id}`, kind: 'rejected', value: record },
  ]);
  state.rejected$.next([...state.rejected]);
}

/** Drops every unpushed change and returns those documents to the server's version. */
export async function clearPending(state: ReplicationState): Promise<number> {
  const entries = state.pending.all();
  const docs = new Map<string, Set<string>>();
  for (const entry of entries) {
    const set = docs.get(entry.event.collection) ?? new Set<string>();
    set.add(entry.event.documentId);
    docs.set(entry.event.collection, set);
  }
  for (const [collectionName, ids] of docs) {
    if (!state.db.collections[collectionName]) continue;
    const collection = collectionOf(state, collectionName);
    const list = [...ids];
    const currents = await findLocal(collection, list);
    const versions = await serverVersions(state, collectionName, list, currents);
    await writeLocal(
      state,
      collection,
      list.flatMap((documentId) => revertRow(state, collectionName, documentId, currents.get(documentId), versions.get(documentId) ?? null) ?? []),
    );
  }
  await state.meta.write(state.pending.clear());
  return entries.length;
}

export async function clearRejected(state: ReplicationState): Promise<number> {
  const records = state.rejected.splice(0);
  await state.meta.write(records.map((record) => ({ id: `rejected|${record.id}`, kind: 'rejected' as const })));
  state.rejected$.next([]);
  return records.length;
}

// ---- deciding ----------------------------------------------------------------------

/**
 * The server's answers to a batch, sorted: the acknowledged versions, the
 * conflicts and the refusals. A document's answers after its first conflict
 * or refusal in the batch are not taken.
 */
function sortOutcomes(batch: readonly PendingEntry[], outcomes: readonly PushOutcome[], clientId: string) {
  const acked: { entry: PendingEntry; version: Shadow }[] = [];
  const conflicts: { entry: PendingEntry; head: DocumentHead | null }[] = [];
  const rejected: { entry: PendingEntry; error: WireError }[] = [];
  // Documents with a conflicting or refused event in this batch: their later answers are not taken.
  const stopped = new DocumentMap<true>();
  batch.forEach((entry, i) => {
    const outcome = outcomes[i]!;
    const { collection, documentId } = entry.event;
    if (stopped.has(collection, documentId)) return;
    if (typeof outcome === 'number') {
      const { data, op, id, hlc } = entry.event;
      acked.push({ entry, version: { data, deleted: op === 'delete', seq: outcome, eventId: id, hlc, clientId } });
      return;
    }
    stopped.set(collection, documentId, true);
    if (outcome.status === 'conflict') conflicts.push({ entry, head: outcome.head });
    else rejected.push({ entry, error: outcome.error });
  });
  return { acked, conflicts, rejected };
}

/**
 * The write that returns a document to the server's version (a refused or
 * dropped local change). Without a known server version the document is
 * deleted; when only the content of that version is unknown (lost to a
 * crash), the document is left as it is (no write at all, so it keeps its stamp).
 */
function revertRow(
  state: ReplicationState,
  collectionName: string,
  documentId: string,
  current: RxDocumentData<unknown> | undefined,
  server: KnownVersion | null,
  fallback: Record<string, unknown> = {},
): LocalWrite | undefined {
  if (!server) return { documentId, current, target: { data: localState(current)?.data ?? fallback, deleted: true } };
  if (hasData(server)) return { documentId, current, target: server, stamp: server };
  state.logger.warn({ collection: collectionName, documentId }, 'the server version of this document is not known here; it keeps its local content');
  return undefined;
}
