/** What the server does with each client message; the socket wiring lives in server.ts. */
import type { Server, Socket } from 'socket.io';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import {
  parseMessage,
  pullMessageSchema,
  pushMessageSchema,
  subscribeMessageSchema,
  MESSAGE,
  type ClientToServerEvents,
  type PullReply,
  type PushReply,
  type PushResult,
  type ServerToClientEvents,
  type StoredEvent,
  type SubscribeReply,
} from '../shared/protocol.js';
import type { ResolvedServerOptions } from './options.js';
import type { IncomingEvent, SyncStorage } from './storage/types.js';

export interface SocketData<User = unknown> {
  user: User;
  clientId: string;
  collections: string[];
  checkpoint: number;
  connectedAt: number;
  lastSeen: number;
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
  storage: SyncStorage;
  logger: Logger;
  io: SyncIo<User>;
  stats: ServerStats;
  emit: <K extends keyof ServerEvents>(event: K, ...args: ServerEvents[K]) => void;
}

export const roomOf = (collection: string) => `collection:${collection}`;

function assertKnownCollection(ctx: ServerContext<any>, collection: string): void {
  if (ctx.options.collections && !ctx.options.collections.includes(collection)) {
    throw new SyncError('UNKNOWN_COLLECTION', `unknown collection "${collection}": this server syncs ${ctx.options.collections.join(', ')}`, {
      collection,
    });
  }
}

/** Byte size of a message as it came off the wire, measured before any other work. */
function payloadBytes(raw: unknown): number {
  try {
    return Buffer.byteLength(JSON.stringify(raw) ?? '');
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

export async function handleSubscribe<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<SubscribeReply> {
  const message = parseMessage(subscribeMessageSchema, raw, 'subscribe message');
  const wanted = [...new Set(message.collections)];
  wanted.forEach((collection) => assertKnownCollection(ctx, collection));
  for (const collection of socket.data.collections) {
    if (!wanted.includes(collection)) await socket.leave(roomOf(collection));
  }
  await socket.join(wanted.map(roomOf));
  socket.data.collections = wanted;
  return { collections: wanted };
}

export async function handlePush<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<PushReply> {
  const bytes = payloadBytes(raw);
  if (bytes > ctx.options.maxPayloadBytes) {
    throw new SyncError('PAYLOAD_TOO_LARGE', `push of ${bytes} bytes exceeds maxPayloadBytes (${ctx.options.maxPayloadBytes})`, {
      bytes,
      limit: ctx.options.maxPayloadBytes,
    });
  }
  const started = performance.now();
  const { events } = parseMessage(pushMessageSchema, raw, 'push message');
  if (events.length > ctx.options.maxEventsPerPush) {
    throw new SyncError('TOO_MANY_EVENTS', `push of ${events.length} events exceeds maxEventsPerPush (${ctx.options.maxEventsPerPush})`, {
      count: events.length,
      limit: ctx.options.maxEventsPerPush,
    });
  }

  const results: (PushResult | undefined)[] = new Array(events.length);
  const toSave: IncomingEvent[] = [];
  const savedIndex: number[] = [];
  for (const [index, event] of events.entries()) {
    try {
      assertKnownCollection(ctx, event.collection);
      if (ctx.options.authorize && !(await ctx.options.authorize(socket.data.user, event.collection, event.op, event.data))) {
        throw new SyncError('UNAUTHORIZED', `not allowed to ${event.op} ${event.collection}/${event.documentId}`, {
          collection: event.collection,
          documentId: event.documentId,
          operation: event.op,
        });
      }
      toSave.push({ ...event, clientId: socket.data.clientId });
      savedIndex.push(index);
    } catch (error) {
      ctx.stats.rejected++;
      results[index] = { id: event.id, status: 'rejected', error: SyncError.from(error).toWire() };
    }
  }

  const saved = toSave.length > 0 ? await saveEvents(ctx, toSave) : [];
  const accepted: StoredEvent[] = [];
  const serverTime = Date.now();
  const counts = { accepted: 0, duplicates: 0, conflicts: 0, rejected: events.length - toSave.length };
  saved.forEach((result, i) => {
    results[savedIndex[i]!] = result;
    if (result.status === 'accepted') {
      counts.accepted++;
      accepted.push({ ...toSave[i]!, seq: result.seq, serverTime });
    } else if (result.status === 'duplicate') counts.duplicates++;
    else counts.conflicts++;
  });
  ctx.stats.accepted += counts.accepted;
  ctx.stats.duplicates += counts.duplicates;
  ctx.stats.conflicts += counts.conflicts;
  if (accepted.length > 0) await broadcast(ctx, socket, accepted);
  ctx.emit('push', { durationMs: performance.now() - started, ...counts });
  return { results: results as PushResult[] };
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

export async function handlePull<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<PullReply> {
  const started = performance.now();
  const message = parseMessage(pullMessageSchema, raw, 'pull message');
  message.collections.forEach((collection) => assertKnownCollection(ctx, collection));
  const limit = Math.min(message.limit ?? ctx.options.defaultPullLimit, ctx.options.maxPullLimit);
  let events: StoredEvent[];
  try {
    events = await ctx.storage.getEventsAfter(message.checkpoint, { collections: message.collections, limit });
  } catch (error) {
    ctx.emit('storage-error', { operation: 'read', error });
    ctx.logger.error({ err: error }, 'storage failed to read events');
    throw SyncError.from(error, 'STORAGE_ERROR');
  }
  const hasMore = events.length === limit;
  const checkpoint = events.length > 0 ? events[events.length - 1]!.seq : message.checkpoint;
  socket.data.checkpoint = checkpoint;
  const visible = await readable(ctx, socket.data.user, events);
  ctx.emit('pull', { durationMs: performance.now() - started, events: visible.length });
  return { events: visible, checkpoint, hasMore };
}

/** Leaves out the events the user may not read; the checkpoint still moves past them. */
async function readable<User>(ctx: ServerContext<User>, user: User, events: StoredEvent[]): Promise<StoredEvent[]> {
  const authorize = ctx.options.authorize;
  if (!authorize) return events;
  const allowed: StoredEvent[] = [];
  for (const event of events) {
    if (await authorize(user, event.collection, 'read', event.data)) allowed.push(event);
  }
  return allowed;
}

/** Sends accepted events to every other socket subscribed to their collection, on every server instance. */
async function broadcast<User>(ctx: ServerContext<User>, sender: SyncSocket<User>, events: StoredEvent[]): Promise<void> {
  const byCollection = new Map<string, StoredEvent[]>();
  for (const event of events) {
    const list = byCollection.get(event.collection);
    if (list) list.push(event);
    else byCollection.set(event.collection, [event]);
  }
  for (const [collection, list] of byCollection) {
    if (!ctx.options.authorize) {
      sender.to(roomOf(collection)).emit(MESSAGE.live, { events: list });
      continue;
    }
    const sockets = await ctx.io.in(roomOf(collection)).fetchSockets();
    for (const target of sockets) {
      if (target.id === sender.id) continue;
      const allowed = await readable(ctx, target.data.user, list);
      if (allowed.length > 0) target.emit(MESSAGE.live, { events: allowed });
    }
  }
}
