/** What the server does with each client message; the socket wiring lives in server.ts. */
import { isDeepStrictEqual } from 'node:util';
import type { RemoteSocket, Server, Socket } from 'socket.io';
import { Adapter } from 'socket.io-adapter';
import { DocumentMap } from '../shared/document-map.js';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import {
  parseMessage,
  pullMessageSchema,
  spanSet,
  pushRowsMessageSchema,
  subscribeMessageSchema,
  MESSAGE,
  type ClientToServerEvents,
  type PullPage,
  type PullMessage,
  type PushReply,
  type ProtocolVersion,
  fromPushRows,
  isStorableText,
  pushedEventProblem,
  toPushOutcome,
  type DocumentHead,
  type PushResult,
  type ServerToClientEvents,
  type StoredEvent,
  toRemoteEvent,
  toPullPage,
  type SubscribeReply,
  type SyncEvent,
} from '../shared/protocol/index.js';
import { isPushRowsMessage } from '../shared/wire-checks.js';
import { jsonLengthBound } from '../shared/json.js';
import { documentBytes } from './storage/size.js';
import { assertMayWrite, readable, readableHead, unauthorized } from './access.js';
import { defaultUserKey } from './limits.js';
import type { ResolvedServerOptions } from './options.js';
import type { Redactor } from './redact.js';
import type { IncomingEvent, SyncStorage } from './storage/types.js';
import { assertClockInRange, assertMatchesSchema } from './validation.js';
import { byScope, effectiveScope, mayBeScoped, scopedRoomOf, splitForScope, type ScopedLiveEvent, type SocketScopes } from './scopes.js';
import { matchesScope, parseScope, sameScope, toSelector, type Scope, type ScopeSelector } from '../shared/scope.js';

export interface SocketData<User = unknown> {
  user: User;
  clientId: string;
  /** The protocol version the client spoke in its handshake. */
  protocol: ProtocolVersion;
  collections: string[];
  checkpoint: number;
  connectedAt: number;
  lastSeen: number;
  /** When the session ends (ms since the epoch), if `authenticate` returned an expiry. */
  expiresAt?: number;
  /** The user's name for per-user limits (see the `userKey` option). */
  userKey?: string;
  /** The scope of each scoped collection this socket subscribed to (for live fan-out). */
  scopes?: SocketScopes;
}

export type SyncIo<User = unknown> = Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData<User>>;
export type SyncSocket<User = unknown> = Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData<User>>;

export interface ServerStats {
  accepted: number;
  duplicates: number;
  conflicts: number;
  rejected: number;
  invalidMessages: number;
}

/** What the server reports about its work, for metrics and logs. */
export interface ServerEvents {
  push: [{ durationMs: number; accepted: number; duplicates: number; conflicts: number; rejected: number }];
  pull: [{ durationMs: number; events: number }];
  'storage-error': [{ operation: 'save' | 'read'; error: unknown }];
}

export interface ServerContext<User = unknown> {
  options: ResolvedServerOptions<User>;
  /** The same as options.authorize; here so the context serves as an AccessContext. */
  authorize?: ResolvedServerOptions<User>['authorize'];
  /** The same as options.authorizeRead, for the same reason. */
  authorizeRead?: ResolvedServerOptions<User>['authorizeRead'];
  storage: SyncStorage;
  logger: Logger;
  io: SyncIo<User>;
  stats: ServerStats;
  redactor: Redactor;
  emit: <K extends keyof ServerEvents>(event: K, ...args: ServerEvents[K]) => void;
  /**
   * Hands accepted events to the live fan-out, which runs after the push is
   * acknowledged: server-wide, in push order, the pushes of one turn of the
   * event loop together.
   */
  fanOut: (push: LivePush<User>) => void;
}

export const roomOf = (collection: string) => `collection:${collection}`;

function assertKnownCollection(ctx: ServerContext<any>, collection: string): void {
  if (ctx.options.collections && !ctx.options.collections.includes(collection)) {
    throw new SyncError('UNKNOWN_COLLECTION', `unknown collection "${collection}": this server syncs ${ctx.options.collections.join(', ')}`, {
      collection,
    });
  }
}

/**
 * Refuses what a storage could not keep, a reader could not apply, or a
 * recursive encoder could not send back out: a document id or clock that
 * syncEventSchema refuses (a push is read by its shape, see
 * pushRowSchema), documents nested deeper than maxDocumentDepth or
 * larger than a pull page carries (maxPullBytes), binary values, numbers
 * JSON cannot carry, and strings (keys, values, patch paths) with a NUL
 * character or an unpaired surrogate. The same event is then refused on
 * every storage, not just on some.
 */
function assertStorable(ctx: ServerContext<any>, event: SyncEvent): void {
  const problem = pushedEventProblem(event);
  // The id alone names the event: the refused document id may be what is wrong.
  if (problem) throw new SyncError('INVALID_MESSAGE', `event ${event.id}: ${problem.path}: ${problem.message}`, { path: problem.path });
  // Runs for every pushed event: a walk that allocates nothing unless it refuses.
  const refuse = (what: string): never => {
    throw new SyncError('INVALID_MESSAGE', `event ${event.id} for ${event.collection}/${event.documentId}: ${what}`);
  };
  const max = ctx.options.maxDocumentDepth;
  const assertValue = (value: unknown) => {
    const problem = unstorable(value, 1, max);
    if (problem === DEPTH) {
      throw new SyncError('INVALID_MESSAGE', `document ${event.collection}/${event.documentId} is nested deeper than maxDocumentDepth (${max})`, { limit: max });
    }
    if (problem) refuse(problem);
  };
  assertValue(event.data);
  for (const op of event.patch ?? []) {
    if (!isStorableText(op.path) || (op.from !== undefined && !isStorableText(op.from))) refuse('a patch path holds a NUL character or an unpaired surrogate');
    assertValue(op.value);
  }
  assertPullable(ctx, event);
}

/**
 * Refuses a document that no pull page could carry: one larger than
 * maxPullBytes, measured as storage measures it (documentBytes). A push is
 * at most maxPayloadBytes of JSON, so only a maxPullBytes below that can be
 * exceeded; even then a document is measured exactly only when a cheap upper
 * bound (jsonLengthBound) is over it.
 */
function assertPullable(ctx: ServerContext<any>, event: SyncEvent): void {
  const limit = ctx.options.maxPullBytes;
  if (limit >= ctx.options.maxPayloadBytes || jsonLengthBound(event.data) <= limit) return;
  const bytes = documentBytes(event.data);
  if (bytes > limit) {
    throw new SyncError('PAYLOAD_TOO_LARGE', `document ${event.collection}/${event.documentId} is ${bytes} bytes of JSON, more than a pull page carries (maxPullBytes, ${limit})`, { bytes, limit });
  }
}

const DEPTH = 'depth';

/** What in `value` (at nesting `depth`) no storage could keep, or undefined when all of it can be kept. */
function unstorable(value: unknown, depth: number, max: number): string | undefined {
  if (typeof value === 'string') return isStorableText(value) ? undefined : 'a string holds a NUL character or an unpaired surrogate';
  // JSON.parse reads 1e400 as Infinity: kept as is in memory, as null by the storages that keep JSON text.
  if (typeof value === 'number') return Number.isFinite(value) ? undefined : 'a number is too large for JSON (it parsed as Infinity)';
  if (!value || typeof value !== 'object') return undefined;
  // socket.io carries binary data too; a document is JSON, and every storage keeps JSON only.
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return 'a value is binary data, which a JSON document cannot hold';
  if (depth > max) return DEPTH;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = unstorable(value[i], depth + 1, max);
      if (problem) return problem;
    }
    return undefined;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (!isStorableText(key)) return 'a key holds a NUL character or an unpaired surrogate';
    const problem = unstorable((value as Record<string, unknown>)[key], depth + 1, max);
    if (problem) return problem;
  }
  return undefined;
}

export async function handleSubscribe<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<SubscribeReply> {
  const message = parseMessage(subscribeMessageSchema, raw, 'subscribe message');
  const wanted = [...new Set(message.collections)];
  wanted.forEach((collection) => assertKnownCollection(ctx, collection));
  for (const collection of Object.keys(message.scopes ?? {})) {
    if (!wanted.includes(collection)) throw new SyncError('INVALID_SCOPE', `scopes.${collection}: a scope for a collection the subscription does not name`, { collection });
  }
  const scopes: SocketScopes = {};
  for (const collection of wanted) {
    const scope = await effectiveScope(ctx, socket.data.user, collection, message.scopes?.[collection] ?? null);
    if (scope !== null) scopes[collection] = [...scope];
  }
  // Rooms joined and left in one step after the last await: a pull sent right behind it (clients
  // do not wait for this answer) is served only after this message, so no event falls between;
  // and a later subscription, served in turn, always has the last word.
  const changes = [socket.join(wanted.map((collection) => (scopes[collection] ? scopedRoomOf(collection) : roomOf(collection))))];
  for (const collection of socket.data.collections) {
    if (!wanted.includes(collection) || scopes[collection]) changes.push(socket.leave(roomOf(collection)));
    if (!wanted.includes(collection) || !scopes[collection]) changes.push(socket.leave(scopedRoomOf(collection)));
  }
  socket.data.collections = wanted;
  socket.data.scopes = scopes;
  await Promise.all(changes);
  return { collections: wanted, ...scopeReply(scopes) };
}

function scopeReply(scopes: SocketScopes): { scopes?: Record<string, ScopeSelector | null> } {
  const entries = Object.entries(scopes);
  return entries.length === 0 ? {} : { scopes: Object.fromEntries(entries.map(([collection, atoms]) => [collection, toSelector(atoms)])) };
}

/** Moves a subscribed socket's live delivery to `scope` (a rule that changed since it subscribed). */
async function followScope(socket: SyncSocket<any>, collection: string, scope: Scope): Promise<void> {
  if (!socket.data.collections.includes(collection)) return;
  const scopes = { ...socket.data.scopes };
  if (scope === null) delete scopes[collection];
  else scopes[collection] = [...scope];
  socket.data.scopes = scopes;
  await Promise.all(scope === null ? [socket.leave(scopedRoomOf(collection)), socket.join(roomOf(collection))] : [socket.leave(roomOf(collection)), socket.join(scopedRoomOf(collection))]);
}

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

  const results: (PushResult | undefined)[] = new Array(events.length);
  const toSave: IncomingEvent[] = [];
  const savedIndex: number[] = [];
  for (let index = 0; index < events.length; index++) {
    const event = events[index]!;
    try {
      assertKnownCollection(ctx, event.collection);
      assertStorable(ctx, event);
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
    ctx.emit('storage-error', { operation: 'read', error });
    ctx.logger.error({ err: error }, 'storage failed to read document heads');
    throw SyncError.from(error, 'STORAGE_ERROR');
  }
  return heads;
}

async function saveEvents(ctx: ServerContext<any>, events: IncomingEvent[]) {
  try {
    return await ctx.storage.saveEvents(events);
  } catch (error) {
    ctx.emit('storage-error', { operation: 'save', error });
    ctx.logger.error({ err: error }, 'storage failed to save events');
    throw SyncError.from(error, 'STORAGE_ERROR');
  }
}

export async function handlePull<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<PullPage> {
  const started = performance.now();
  const message = parseMessage(pullMessageSchema, raw, 'pull message');
  message.collections.forEach((collection) => assertKnownCollection(ctx, collection));
  const limit = Math.min(message.limit ?? ctx.options.defaultPullLimit, ctx.options.maxPullLimit);
  if (message.scope) return scopedPull(ctx, socket, message as typeof message & { scope: NonNullable<typeof message.scope> }, limit, started);
  // A plain pull gets no more than the rule allows either: its events are held to the rule's scopes,
  // and the reply names them, so that the client goes on with scoped pulls.
  const ruled: SocketScopes = {};
  for (const collection of message.collections) {
    if (!mayBeScoped(ctx.options, collection)) continue;
    const scope = await effectiveScope(ctx, socket.data.user, collection, null);
    if (scope !== null) ruled[collection] = [...scope];
  }
  let events: StoredEvent[];
  let hasMore: boolean;
  try {
    // Bounded in bytes as well as in count: a page of large documents is never one giant string to encode.
    const page = await ctx.storage.getChangesAfter(message.checkpoint, { collections: message.collections, limit, maxBytes: ctx.options.maxPullBytes });
    hasMore = page.length >= limit || page.cutByBytes === true;
    events = page;
  } catch (error) {
    ctx.emit('storage-error', { operation: 'read', error });
    ctx.logger.error({ err: error }, 'storage failed to read events');
    throw SyncError.from(error, 'STORAGE_ERROR');
  }
  const checkpoint = events.length > 0 ? events[events.length - 1]!.seq : message.checkpoint;
  socket.data.checkpoint = checkpoint;
  if (Object.keys(ruled).length > 0) events = events.filter((event) => !ruled[event.collection] || matchesScope(ruled[event.collection]!, event.data));
  // Events the client already has from live messages, and those the user may not read, are left out;
  // the checkpoint still moves past them.
  if (message.have && message.have.length > 0) {
    const has = spanSet(message.have);
    events = events.filter((event) => !has(event.seq));
  }
  const visible = await readable(ctx, socket.data.user, events);
  ctx.emit('pull', { durationMs: performance.now() - started, events: visible.length });
  return { ...toPullPage(visible), checkpoint, hasMore, ...scopeReply(ruled) };
}

/** A pull of one collection in a scope: the changes the client lacks in it, and what left it (see getScopedChanges). */
async function scopedPull<User>(
  ctx: ServerContext<User>,
  socket: SyncSocket<User>,
  message: PullMessage & { scope: { want: unknown; held: unknown; through: number } },
  limit: number,
  started: number,
): Promise<PullPage> {
  if (message.collections.length !== 1) throw new SyncError('INVALID_MESSAGE', 'a scoped pull names exactly one collection', { collections: message.collections });
  const collection = message.collections[0]!;
  const scope = await effectiveScope(ctx, socket.data.user, collection, message.scope.want);
  const held = parseScope(message.scope.held, 'scope.held');
  // The first page of a catch-up from nothing: where it begins, read before the page so that every head
  // the catch-up sends is at or after it (see ScopedQuery.start).
  const first = message.checkpoint === 0 && message.scope.through === 0;
  let start = message.scope.through === 0 ? message.scope.start : undefined;
  let page: Awaited<ReturnType<SyncStorage['getScopedChanges']>>;
  try {
    if (first) start = await ctx.storage.getLatestSequence();
    page = await ctx.storage.getScopedChanges(message.checkpoint, {
      collection,
      scope,
      held: { scope: held, through: message.scope.through },
      ...(start !== undefined ? { start } : {}),
      limit,
      maxBytes: ctx.options.maxPullBytes,
    });
  } catch (error) {
    ctx.emit('storage-error', { operation: 'read', error });
    ctx.logger.error({ err: error }, 'storage failed to read scoped changes');
    throw SyncError.from(error, 'STORAGE_ERROR');
  }
  const hasMore = page.length >= limit || page.cutByBytes === true;
  if (page.through < message.checkpoint) throw new SyncError('STORAGE_ERROR', `storage moved a scoped reader back from ${message.checkpoint} to ${page.through}`);
  socket.data.checkpoint = page.through;
  let rows: StoredEvent[] = [];
  const leaves: [string, number][] = [];
  for (const change of page) {
    if (change.leave) leaves.push([change.documentId, change.seq]);
    else rows.push(change);
  }
  if (message.have && message.have.length > 0) {
    const has = spanSet(message.have);
    rows = rows.filter((event) => !has(event.seq));
  }
  const visible = await readable(ctx, socket.data.user, rows);
  // Live delivery follows the scope this pull found (the rule may have changed since the subscription).
  const current = socket.data.scopes?.[collection] ?? null;
  if (!sameScope(current, scope)) await followScope(socket, collection, scope);
  ctx.emit('pull', { durationMs: performance.now() - started, events: visible.length });
  return {
    ...toPullPage(visible),
    checkpoint: page.through,
    hasMore,
    scopes: { [collection]: toSelector(scope) },
    ...(leaves.length > 0 ? { leaves } : {}),
    ...(first && start !== undefined ? { start } : {}),
  };
}

/** Accepted events of one push, on their way to the other readers. */
export interface LivePush<User = unknown> {
  ctx: ServerContext<User>;
  sender: SyncSocket<User>;
  events: StoredEvent[];
  /** In scoped collections, the document each event replaced (null: none; undefined: not known). */
  before: (Record<string, unknown> | null | undefined)[];
}

/**
 * False when no socket but the senders is in the room: then a live message
 * need not be built (for a push of thousands of events, its encoding is a
 * good part of the push). Only with socket.io's own in-memory adapter,
 * however it was set: any other adapter may carry the message to readers on
 * other server instances, which this one cannot see.
 */
function othersMayListen(senders: readonly SyncSocket<any>[], room: string): boolean {
  if (!ownsRooms(senders)) return true;
  const members = ownRoomMembers(senders, room);
  if (!members) return false;
  if (senders.length > 1) return true;
  return members.size > 1 || !members.has(senders[0]!.id);
}

/**
 * Sends the accepted events of `pushes` (those of one turn, or those that
 * came while the fan-out before was busy) to every socket subscribed to
 * their collection, on every server instance, as one message per socket
 * and collection: the frame and the write are paid per socket per batch,
 * not per socket per push. A sender gets the others' events, not its own.
 */
export async function broadcast<User>(pushes: readonly LivePush<User>[]): Promise<void> {
  const ctx = pushes[0]!.ctx;
  const byCollection = new Map<string, LiveGroup<User>>();
  for (const { sender, events, before } of pushes) {
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      let group = byCollection.get(event.collection);
      if (!group) byCollection.set(event.collection, (group = { events: [], before: [], from: [], senders: new Map() }));
      group.events.push(event);
      group.before.push(before[i]);
      group.from.push(sender.id);
      group.senders.set(sender.id, sender);
    }
  }
  for (const [collection, group] of byCollection) {
    // One collection's failure (a read check that throws, an adapter that times out) is its readers'
    // only: they get these events at their next pull; the other collections go out.
    await broadcastCollection(ctx, collection, group).catch((error: unknown) => ctx.logger.error({ err: error, collection }, 'live fan-out failed'));
  }
}

interface LiveGroup<User> {
  events: StoredEvent[];
  before: (Record<string, unknown> | null | undefined)[];
  from: string[];
  senders: Map<string, SyncSocket<User>>;
}

async function broadcastCollection<User>(ctx: ServerContext<User>, collection: string, group: LiveGroup<User>): Promise<void> {
  // Pushes served in turn commit in turn, but several writers' batches may interleave: in sequence order.
  const order = group.events.map((_, i) => i).sort((a, b) => group.events[a]!.seq - group.events[b]!.seq);
  const sorted = { events: order.map((i) => group.events[i]!), before: order.map((i) => group.before[i]), from: order.map((i) => group.from[i]!), senders: group.senders };
  if (mayBeScoped(ctx.options, collection)) await broadcastScoped(ctx, collection, sorted);
  await broadcastUnscoped(ctx, collection, sorted);
}

/**
 * The scoped readers of a collection get the events in their scope and a
 * leave for each document an event moved out of it: per distinct scope and
 * user, one check, and one message to all the sockets that share both.
 */
async function broadcastScoped<User>(ctx: ServerContext<User>, collection: string, group: LiveGroup<User>): Promise<void> {
  const room = scopedRoomOf(collection);
  const senders = [...group.senders.values()];
  if (!othersMayListen(senders, room)) return;
  const sockets = await ctx.io.in(room).fetchSockets();
  const slices = fanoutSlices();
  for (const { scope, sockets: inScope } of byScope<User, (typeof sockets)[number]>(sockets, collection).values()) {
    for (const readers of readersByUser(ctx, inScope, new Set())) {
      // A sender gets the others' events only: its own, it has.
      const bySender = new Map<string, typeof readers>();
      for (const reader of readers) {
        const key = group.senders.has(reader.id) ? reader.id : '';
        bySender.set(key, [...(bySender.get(key) ?? []), reader]);
      }
      for (const [sender, sockets] of bySender) {
        const candidates = group.events.map((event, i): ScopedLiveEvent<StoredEvent> => ({ event, before: group.before[i] })).filter((_, i) => sender === '' || group.from[i] !== sender);
        const { inScope: events, leaving } = splitForScope(scope, candidates);
        const visible = events.length > 0 ? await readable(ctx, sockets[0]!.data.user, events).catch(() => []) : [];
        if (visible.length === 0 && leaving.length === 0) continue;
        const message = {
          events: visible.map(toRemoteEvent),
          ...(leaving.length > 0 ? { leaves: leaving.map((event) => ({ collection, documentId: event.documentId, seq: event.seq })) } : {}),
        };
        for (let i = 0; i < sockets.length; i += FANOUT_CHUNK) {
          ctx.io.to(sockets.slice(i, i + FANOUT_CHUNK).map((socket) => socket.id)).emit(MESSAGE.live, message);
          if (slices.over()) await slices.next();
        }
      }
      if (slices.over()) await slices.next();
    }
  }
}

async function broadcastUnscoped<User>(ctx: ServerContext<User>, collection: string, group: LiveGroup<User>): Promise<void> {
  const room = roomOf(collection);
  const senders = [...group.senders.values()];
  if (!othersMayListen(senders, room)) return;
  const { events, from } = group;
  const excluded = senders.map((sender) => sender.id);
  // What a sender subscribed to the collection gets: the other senders' events.
  const othersFor = (sender: SyncSocket<User>) => (senders.length > 1 && sender.rooms.has(room) ? events.filter((_, i) => from[i] !== sender.id) : []);
  if (!ctx.authorize && !ctx.authorizeRead) {
    const message = { events: ctx.redactor.events(events).map(toRemoteEvent) };
    const members = ownRoomMembers(senders, room);
    if (members && members.size > FANOUT_SLICE_SOCKETS) {
      // One emit to ten thousand sockets held the event loop for half a second: in chunks, the message encoded
      // once, and the loop given back every few ms so that pushes and their acks go on meanwhile.
      const ids = [...members].filter((id) => !group.senders.has(id));
      const slices = fanoutSlices();
      for (let i = 0; i < ids.length; i += FANOUT_SLICE_SOCKETS) {
        if (slices.over()) await slices.next();
        ctx.io.to(ids.slice(i, i + FANOUT_SLICE_SOCKETS)).emit(MESSAGE.live, message);
      }
    } else ctx.io.to(room).except(excluded).emit(MESSAGE.live, message);
    for (const sender of senders) {
      const others = othersFor(sender);
      if (others.length > 0) sender.emit(MESSAGE.live, { events: ctx.redactor.events(others).map(toRemoteEvent) });
    }
    return;
  }
  const sockets = await ctx.io.in(room).fetchSockets();
  const slices = fanoutSlices();
  // Readers that may see the same events (users of one tenant, say) share one message, encoded once
  // per chunk of sockets; gathered by those events, sent when a slice ends.
  const audiences = new Map<string, { events: StoredEvent[]; readers: string[] }>();
  const flush = async () => {
    const ready = [...audiences.values()];
    audiences.clear();
    for (const { events: visible, readers } of ready) {
      const message = { events: visible.map(toRemoteEvent) };
      // Writing one message to a thousand sockets holds the event loop as long as a thousand checks: in chunks too.
      for (let i = 0; i < readers.length; i += FANOUT_CHUNK) {
        ctx.io.to(readers.slice(i, i + FANOUT_CHUNK)).emit(MESSAGE.live, message);
        if (slices.over()) await slices.next();
      }
    }
  };
  for (const readers of readersByUser(ctx, sockets, new Set(excluded))) {
    // Undecided access leaves these readers without the live message: their next pull brings the events.
    const visible = await readable(ctx, readers[0]!.data.user, events).catch(() => []);
    if (visible.length > 0) {
      // Redaction is the same for every reader, so the sequences say which events, and how, a message holds.
      const key = visible.length === events.length ? '' : visible.map((event) => event.seq).join(' ');
      const audience = audiences.get(key);
      if (audience) audience.readers.push(...readers.map((reader) => reader.id));
      else audiences.set(key, { events: visible, readers: readers.map((reader) => reader.id) });
    }
    // A synchronous authorize never gives the event loop back on its own: other clients' messages wait for the slice only.
    if (slices.over()) {
      await flush();
      if (slices.over()) await slices.next();
    }
  }
  await flush();
  for (const sender of senders) {
    const others = othersFor(sender);
    if (others.length === 0) continue;
    const visible = await readable(ctx, sender.data.user, others).catch(() => []);
    if (visible.length > 0) sender.emit(MESSAGE.live, { events: visible.map(toRemoteEvent) });
  }
}

/** Sockets one live emit goes to at most, between two looks at the clock, where the room's members are known here (socket.io's own adapter). */
const FANOUT_SLICE_SOCKETS = 64;

/** Whether socket.io's own in-memory adapter holds the rooms, so that this instance knows every member. */
function ownsRooms(senders: readonly SyncSocket<any>[]): boolean {
  return Object.getPrototypeOf(senders[0]!.nsp.adapter) === Adapter.prototype;
}

/** The members of a room when this instance knows them all (see ownsRooms); undefined with any other adapter. */
function ownRoomMembers(senders: readonly SyncSocket<any>[], room: string): ReadonlySet<string> | undefined {
  return ownsRooms(senders) ? senders[0]!.nsp.adapter.rooms.get(room) : undefined;
}

/** How long live fan-out may hold the event loop before it lets other clients' messages in. */
const FANOUT_SLICE_MS = 5;
/** Sockets written one message at a time, between two looks at the clock. */
const FANOUT_CHUNK = 16;

/** The clock of fan-out work: over() once a slice has run its time, next() gives the event loop back and starts another. */
function fanoutSlices() {
  let started = performance.now();
  return {
    over: () => performance.now() - started > FANOUT_SLICE_MS,
    next: async () => {
      await new Promise((resolve) => setImmediate(resolve));
      started = performance.now();
    },
  };
}

type Reader<User> = Pick<RemoteSocket<ServerToClientEvents, SocketData<User>>, 'id' | 'data'>;

/**
 * The sockets but the sender, in groups that read alike, so that one read
 * check serves a whole group: the same user key (the `userKey` option) and
 * equal user values. Equal values as well as the key: a session holding
 * other rights under the same key (one opened before a role change) is
 * checked on its own. A socket whose user has no key is a group of its own.
 */
function readersByUser<User, R extends Reader<User>>(ctx: ServerContext<User>, sockets: readonly R[], excluded: ReadonlySet<string>): R[][] {
  const keyOf = ctx.options.userKey ?? defaultUserKey;
  const byKey = new Map<string, R[][]>();
  const groups: R[][] = [];
  for (const socket of sockets) {
    if (excluded.has(socket.id)) continue;
    // Set at the handshake when per-user limits are on; else asked here.
    let key = socket.data.userKey;
    if (key === undefined) {
      try {
        key = keyOf(socket.data.user);
      } catch {
        key = undefined;
      }
    }
    const alike = key === undefined ? undefined : byKey.get(key);
    const group = alike?.find((candidate) => isDeepStrictEqual(candidate[0]!.data.user, socket.data.user));
    if (group) {
      group.push(socket);
      continue;
    }
    const created = [socket];
    groups.push(created);
    if (key === undefined) continue;
    if (alike) alike.push(created);
    else byKey.set(key, [created]);
  }
  return groups;
}
