/** Pushes: each event checked, authorized and saved; the ack answers per event, and the accepted go to the live fan-out. */
import { attachmentsOf, attachmentsProblem } from '../../shared/attachments.js';
import { DocumentMap } from '../../shared/document-map.js';
import { SyncError } from '../../shared/errors.js';
import {
  fromPushRows,
  parseMessage,
  pushRowsMessageSchema,
  toPushOutcome,
  type DocumentHead,
  type PushReply,
  type PushResult,
  type StoredEvent,
  type SyncEvent,
} from '../../shared/protocol/index.js';
import { isPushRowsMessage } from '../../shared/wire-checks.js';
import { assertMayWrite, readableHead, unauthorized } from '../access.js';
import { mayBeScoped } from '../scopes.js';
import type { IncomingEvent } from '../storage/types.js';
import { assertClockInRange, assertMatchesSchema } from '../validation.js';
import { assertKnownCollection, storageFailure, type ServerContext, type SyncSocket } from './context.js';
import { assertStorable } from './storable.js';

export async function handlePush<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<PushReply> {
  const started = performance.now();
  // Counted before validation, so that a huge batch is refused without checking each event.
  const count = Array.isArray((raw as { events?: unknown } | null)?.events) ? (raw as { events: unknown[] }).events.length : 0;
  if (count > ctx.options.maxEventsPerPush) {
    throw new SyncError('TOO_MANY_EVENTS', `push of ${count} events exceeds maxEventsPerPush (${ctx.options.maxEventsPerPush})`, {
      count,
      limit: ctx.options.maxEventsPerPush,
    });
  }
  const { clientId, user } = socket.data;
  const events = fromPushRows(parseMessage(pushRowsMessageSchema, raw, 'push message', isPushRowsMessage), clientId);
  const heads = await headsOf(ctx, events);
  const stored = await storedBlobs(ctx, events);

  const results: (PushResult | undefined)[] = new Array(events.length);
  const toSave: IncomingEvent[] = [];
  const savedIndex: number[] = [];
  for (let index = 0; index < events.length; index++) {
    const event = events[index]!;
    try {
      assertKnownCollection(ctx, event.collection);
      assertStorable(ctx, event);
      if (event.op !== 'delete') assertAttachmentsStored(ctx, event, stored);
      if (ctx.options.maxClockDrift !== false) assertClockInRange(event, ctx.options.maxClockDrift, Date.now());
      const head = heads.get(event.collection, event.documentId);
      // Without an authorize hook there is nothing to wait for: no promise per event.
      if (ctx.authorize) await assertMayWrite(ctx, user, event, head);
      const kept = ctx.redactor.keepHidden(event, head);
      // The document as it would be stored, hidden fields carried over included: what readers get to apply.
      if (ctx.options.schemas) assertMatchesSchema(ctx.options.schemas, kept);
      // In place: the event is this server's own copy (the schema check made it). A spread with more
      // fields would also be a much slower path in V8, per event.
      toSave.push(Object.assign(kept, { clientId }));
      savedIndex.push(index);
    } catch (error) {
      const syncError = SyncError.from(error);
      if (syncError.code === 'AUTHORIZATION_FAILED') throw syncError;
      results[index] = { id: event.id, status: 'rejected', error: syncError.toWire() };
    }
  }

  const saved = toSave.length > 0 ? await saveEvents(ctx, toSave) : [];
  // The stored events for live messages are made only if someone may receive them (see broadcast()).
  const accepted: IncomingEvent[] = [];
  const acceptedSeqs: number[] = [];
  const before: (Record<string, unknown> | null | undefined)[] = [];
  for (let i = 0; i < saved.length; i++) {
    const result = saved[i]!;
    let answer: PushResult = result;
    if (result.status === 'accepted') {
      const event = toSave[i]!;
      accepted.push(event);
      acceptedSeqs.push(result.seq);
      if (mayBeScoped(ctx.options, event.collection)) {
        // The version this event replaced, when the head read before the save is that version.
        const head = heads.get(event.collection, event.documentId);
        before.push(event.baseEventId === null ? null : head && head.eventId === event.baseEventId ? (head.deleted ? null : head.data) : undefined);
      } else before.push(undefined);
    } else if (result.status === 'conflict' && result.head) {
      // A conflict answer carries the server's document: only what this user may read of it.
      const head = await readableHead(ctx, user, result.head);
      answer = head ? { ...result, head } : { id: result.id, status: 'rejected', error: unauthorized(toSave[i]!).toWire() };
    }
    results[savedIndex[i]!] = answer;
  }
  const counts = { accepted: 0, duplicates: 0, conflicts: 0, rejected: 0 };
  for (const result of results as PushResult[]) {
    if (result.status === 'accepted') counts.accepted++;
    else if (result.status === 'duplicate') counts.duplicates++;
    else if (result.status === 'conflict') counts.conflicts++;
    else counts.rejected++;
  }
  ctx.stats.accepted += counts.accepted;
  ctx.stats.duplicates += counts.duplicates;
  ctx.stats.conflicts += counts.conflicts;
  ctx.stats.rejected += counts.rejected;
  // Acknowledged once durable: the fan-out to other readers follows, in push order, without the writer waiting for it.
  if (accepted.length > 0) {
    // Only for the type: a live message leaves serverTime out (toRemoteEvent).
    const serverTime = Date.now();
    ctx.fanOut({ ctx, sender: socket, events: accepted.map((event, i): StoredEvent => Object.assign({}, event, { seq: acceptedSeqs[i]!, serverTime })), before });
  }
  ctx.emit('push', { durationMs: performance.now() - started, ...counts });
  return { results: (results as PushResult[]).map(toPushOutcome) };
}

/** Which digests the pushed documents name are stored, with their lengths (none named: an empty map, no store call). */
async function storedBlobs(ctx: ServerContext<any>, events: readonly SyncEvent[]): Promise<Map<string, number>> {
  const digests = new Set<string>();
  for (const event of events) {
    const attachments = event.op === 'delete' ? undefined : attachmentsOf(event.data);
    if (!attachments || attachmentsProblem(event.data)) continue;
    for (const id in attachments) digests.add(attachments[id]!.digest);
  }
  if (digests.size === 0 || !ctx.blobs) return new Map();
  try {
    return await ctx.blobs.stored([...digests]);
  } catch (error) {
    throw storageFailure(ctx, 'read', 'the blob store failed to say which attachments it holds', error);
  }
}

/**
 * A document's attachments must be well formed, within maxAttachmentBytes,
 * and stored here with the length they claim: every version the server
 * keeps is one every reader can download whole.
 */
function assertAttachmentsStored(ctx: ServerContext<any>, event: SyncEvent, stored: ReadonlyMap<string, number>): void {
  const attachments = attachmentsOf(event.data);
  if (!attachments && !Object.hasOwn(event.data, '_attachments')) return;
  const where = `${event.collection}/${event.documentId}`;
  const problem = attachmentsProblem(event.data);
  if (problem) throw new SyncError('INVALID_MESSAGE', `event ${event.id} for ${where}: ${problem}`, { path: `data.${problem.split(':')[0]}` });
  const entries = Object.entries(attachments!);
  if (entries.length === 0) return;
  if (!ctx.blobs) throw new SyncError('INVALID_MESSAGE', `${where} has attachments, and this server keeps none: createSyncServer was given no \`blobs\` store`);
  const limit = ctx.options.maxAttachmentBytes;
  const missing: string[] = [];
  for (const [id, meta] of entries) {
    if (meta.length > limit) {
      throw new SyncError('ATTACHMENT_TOO_LARGE', `attachment "${id}" of ${where} is ${meta.length} bytes, more than maxAttachmentBytes (${limit})`, { bytes: meta.length, limit });
    }
    const length = stored.get(meta.digest);
    if (length === undefined) missing.push(meta.digest);
    else if (length !== meta.length) throw new SyncError('INVALID_MESSAGE', `attachment "${id}" of ${where} claims ${meta.length} bytes; its content has ${length}`, { path: `data._attachments` });
  }
  if (missing.length > 0) {
    throw new SyncError('ATTACHMENT_MISSING', `${where} names attachment content this server does not hold: upload it first`, { digests: [...new Set(missing)] });
  }
}

/**
 * Current heads of the pushed documents, needed to authorize a write on
 * them, to keep their hidden fields, and in scoped collections to tell the
 * readers a write moved a document out of their scope.
 */
async function headsOf(ctx: ServerContext<any>, events: readonly SyncEvent[]): Promise<DocumentMap<DocumentHead>> {
  const heads = new DocumentMap<DocumentHead>();
  const byCollection = new Map<string, Set<string>>();
  for (const event of events) {
    if (!ctx.authorize && ctx.redactor.fieldsOf(event.collection).length === 0 && !mayBeScoped(ctx.options, event.collection)) continue;
    if (ctx.options.collections && !ctx.options.collections.includes(event.collection)) continue;
    const ids = byCollection.get(event.collection) ?? new Set<string>();
    ids.add(event.documentId);
    byCollection.set(event.collection, ids);
  }
  try {
    for (const [collection, ids] of byCollection) {
      for (const head of await ctx.storage.getHeads(collection, [...ids])) heads.set(head.collection, head.documentId, head);
    }
  } catch (error) {
    throw storageFailure(ctx, 'read', 'storage failed to read document heads', error);
  }
  return heads;
}

async function saveEvents(ctx: ServerContext<any>, events: IncomingEvent[]) {
  try {
    return await ctx.storage.saveEvents(events);
  } catch (error) {
    throw storageFailure(ctx, 'save', 'storage failed to save events', error);
  }
}
