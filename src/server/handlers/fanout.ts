/** Live delivery: the accepted events of recent pushes, sent to every other reader allowed to see them, in slices that let other clients in. */
import { isDeepStrictEqual } from 'node:util';
import type { RemoteSocket } from 'socket.io';
import { Adapter } from 'socket.io-adapter';
import { MESSAGE, toRemoteEvent, type ServerToClientEvents, type StoredEvent } from '../../shared/protocol/index.js';
import { readable } from '../access.js';
import { defaultUserKey } from '../limits.js';
import { byScope, mayBeScoped, scopedRoomOf, splitForScope, type ScopedLiveEvent } from '../scopes.js';
import { roomOf, type ServerContext, type SocketData, type SyncSocket } from './context.js';

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

/**
 * How long live fan-out may hold the event loop before it lets other
 * clients' messages in. A push's acknowledgement waits for the slice under
 * way and, its group commit queued behind the next one, often for that one
 * too: with 5 ms slices a writer's ack p99 was 25–35 ms while 1,000–3,000
 * devices were fed; with 1 ms it is 12–18 ms, and a broadcast still reaches
 * 10,000 devices within 0.35 s (bench/RESULTS.md, scale).
 */
const FANOUT_SLICE_MS = 1;
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
