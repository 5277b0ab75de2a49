/** Pushing the pending log, one batch at a time, and what a refused push leads to. */
import { SyncError, type WireError } from '../../shared/errors.js';
import { parseMessage, syncEventSchema, type PushOutcome } from '../../shared/protocol/index.js';
import { documentKey } from '../replication/attachments.js';
import { anyAttachments, prepareUploads } from './attachments.js';
import type { PendingEntry } from '../documents.js';
import type { Transport } from '../transport.js';
import { leaveIfOutside } from './scope.js';
import { confirm } from './scoped-pull.js';
import { requireReplicator, type EngineState } from './state.js';
import { changeOf, refreshCounts } from './status.js';

/** Said by a push step whose batch was refused for its size: the batch size is now smaller, push again. */
const RETRY_SMALLER = -1;

/** Pushes everything pending, batch after batch; returns how many events were dealt with. */
export async function pushAll(state: EngineState, transport: Transport): Promise<number> {
  // Changes that name content the server lacks wait for its upload; the rest go now.
  if (anyAttachments(state)) await state.queue.run(() => prepareUploads(state, transport));
  let synced = 0;
  for (;;) {
    const pushed = await state.queue.run(() => pushBatch(state, transport));
    if (pushed === RETRY_SMALLER) continue;
    if (pushed === 0) break;
    synced += pushed;
    refreshCounts(state);
  }
  if (state.transfers.missing) {
    state.transfers.missing = false;
    await state.queue.run(() => prepareUploads(state, transport));
  }
  return synced;
}

/** Pushes the next batch and applies the server's answer; returns how many events it dealt with, or RETRY_SMALLER. */
async function pushBatch(state: EngineState, transport: Transport): Promise<number> {
  const replicator = requireReplicator(state);
  let batch = await replicator.takeBatch(state.pushBatchSize, state.pushBatchBytes);
  if (batch.length === 0) return 0;
  try {
    const answered = await transport.push(batch.map((entry) => entry.event));
    const { outcomes, waiting } = setAsideMissing(state, batch, answered);
    const taken = batch.length;
    if (waiting.length > 0) batch = batch.filter((entry) => !waiting.includes(entry));
    // This client holds what it took of the server's answer: a pull need not send that back.
    const acked = await replicator.applyPushResults(batch, outcomes);
    if (acked.length > 0) state.sent$.next(acked.map(changeOf));
    for (const { collection, documentId, seq } of acked) confirm(state, collection, documentId, seq);
    for (const { seq } of acked) state.heldSequences.add(seq);
    // A conflict settled here may have taken the server's version, which may be outside the scope too.
    const settled = batch
      .filter(({ event }) => !acked.some((a) => a.collection === event.collection && a.documentId === event.documentId))
      .map(({ event }) => ({ collection: event.collection, documentId: event.documentId }));
    await leaveIfOutside(state, [...acked, ...settled]);
    // Changes that wait for an upload count as dealt with here: the batches after them go on.
    return taken;
  } catch (error) {
    return handleRefusedPush(state, SyncError.from(error), batch);
  }
}

/**
 * Answers of ATTACHMENT_MISSING (the server lost content it had, or never
 * had it): no refusal of the change, which stays pending, nor of its
 * document's later changes in the batch; the content is uploaded again
 * before the next push. The other answers, with their entries.
 */
export function setAsideMissing(state: EngineState, batch: readonly PendingEntry[], outcomes: readonly PushOutcome[]): { outcomes: PushOutcome[]; waiting: PendingEntry[] } {
  const waitingDocs = new Set<string>();
  const waiting: PendingEntry[] = [];
  const kept: PushOutcome[] = [];
  const book = requireReplicator(state).attachments;
  batch.forEach((entry, i) => {
    const outcome = outcomes[i]!;
    const doc = documentKey(entry.event.collection, entry.event.documentId);
    if (typeof outcome === 'object' && outcome.status === 'rejected' && outcome.error.code === 'ATTACHMENT_MISSING') {
      for (const digest of (outcome.error.details as { digests?: string[] } | undefined)?.digests ?? []) book.onServer.delete(digest);
      waitingDocs.add(doc);
      // Held from the next batch on; the push that follows uploads the content (see pushAll).
      book.held.add(doc);
      state.transfers.missing = true;
    }
    if (waitingDocs.has(doc)) waiting.push(entry);
    else kept.push(outcome);
  });
  if (waiting.length > 0) state.logger.info({ events: waiting.length }, 'the server lacks attachment content; uploading it before pushing those changes');
  return { outcomes: kept, waiting };
}

/** What to do about a push the server refused whole; null: nothing here, the error is thrown on. */
export type RefusedPush =
  /** Push again in batches of this size: the server named its limit (`limit`), or a batch was too many bytes. */
  | { batchSize: number; why: 'limit' | 'bytes' }
  /** Set these aside: they can never be pushed. */
  | { setAside: { entry: PendingEntry; error: WireError }[] }
  | null;

/**
 * Decides about a push the server refused whole. For its size: push
 * smaller batches from now on, and set aside an event too large to be
 * pushed at all. As malformed: set aside the events that can never be
 * taken.
 */
export function judgeRefusedPush(error: SyncError, batch: readonly PendingEntry[]): RefusedPush {
  const limit = error.is('TOO_MANY_EVENTS') ? error.details?.limit : undefined;
  if (limit !== undefined && limit >= 1 && limit < batch.length) {
    return { batchSize: limit, why: 'limit' };
  }
  if (error.code === 'PAYLOAD_TOO_LARGE') {
    if (batch.length > 1) return { batchSize: Math.max(1, Math.floor(batch.length / 2)), why: 'bytes' };
    // One document larger than the server accepts: it can never be pushed.
    return { setAside: [{ entry: batch[0]!, error: error.toWire() }] };
  }
  if (error.code === 'INVALID_MESSAGE' && error.fromPeer) {
    // The server refused the whole push as malformed. Events this client's own protocol check
    // refuses, and events the server's answer names (`events.<i>…`), can never be pushed: they are
    // set aside, so that one bad event does not hold back everything logged after it. A refusal
    // that names no event is retried like any other failure: it says nothing about the events.
    const named = new Set<number>();
    for (const issue of (error.is('INVALID_MESSAGE') && error.details?.issues) || []) {
      const match = /^events\.(\d+)(\.|$)/.exec(issue.path);
      if (match && Number(match[1]) < batch.length) named.add(Number(match[1]));
    }
    const unpushable = batch.flatMap((entry, index) => {
      try {
        parseMessage(syncEventSchema, entry.event, 'change (the server cannot take it)');
      } catch (invalid) {
        return [{ entry, error: SyncError.from(invalid).toWire() }];
      }
      return named.has(index) ? [{ entry, error: error.toWire() }] : [];
    });
    return unpushable.length > 0 ? { setAside: unpushable } : null;
  }
  return null;
}

/**
 * The server refused a whole push: does what judgeRefusedPush decided.
 * Returns how many events were dealt with, or RETRY_SMALLER; other errors
 * are thrown on (and the push is retried later).
 */
async function handleRefusedPush(state: EngineState, error: SyncError, batch: readonly PendingEntry[]): Promise<number> {
  const verdict = judgeRefusedPush(error, batch);
  if (!verdict) throw error;
  if ('batchSize' in verdict) {
    state.pushBatchSize = verdict.batchSize;
    if (verdict.why === 'limit') state.logger.info({ batchSize: verdict.batchSize }, 'server takes fewer events per push; pushing smaller batches');
    return RETRY_SMALLER;
  }
  const replicator = requireReplicator(state);
  for (const { entry, error: reason } of verdict.setAside) await replicator.rejectUnpushable(entry, reason);
  return verdict.setAside.length;
}
