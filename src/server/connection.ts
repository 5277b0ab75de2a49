/**
 * One connection's life on the server, from socket.io's 'connection' to its
 * disconnect: the welcome, one live connection per client id, the session's
 * end, and the dispatch of every message (rate limit, size limit, type,
 * acknowledgement, then the handler, one message of the connection at a time).
 */
import type { EventEmitter } from 'node:events';
import { Adapter } from 'socket.io-adapter';
import { SyncError } from '../shared/errors.js';
import { CLIENT_MESSAGES, MESSAGE, type Ack } from '../shared/protocol/index.js';
import type { DropReason, SyncServerEvents } from './events.js';
import { FrameMeter, TurnClock, payloadBytes } from './frames.js';
import { ConnectionGuard, type EngineConnection, type TurnBudget } from './guard.js';
import { handleBlobDownload, handleBlobState, handleBlobUpload, handlePull, handlePush, handleSubscribe, type ServerContext, type SyncSocket } from './handlers.js';
import type { RateLimiter } from './limits.js';
import { sessionExpiry, type SessionRenewals } from './session.js';

type Handler<User> = (ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown) => Promise<object>;

export interface ConnectionDeps<User> {
  /** What the message handlers work with: options, storage, logger, io, stats, the fan-out. */
  context: ServerContext<User>;
  events: EventEmitter<SyncServerEvents<User>>;
  /** The turn budget that every connection's messages share. */
  budget: TurnBudget;
  limiter?: RateLimiter;
  sessions: SessionRenewals<User>;
}

export class Connections<User = unknown> {
  private readonly guards = new Map<string, ConnectionGuard>();
  private readonly turns = new TurnClock();

  constructor(private readonly deps: ConnectionDeps<User>) {}

  /** Looks at every connection's unsent bytes (replies are also checked as they are sent). */
  checkUnsent(): void {
    for (const guard of this.guards.values()) guard.checkUnsent();
  }

  /** socket.io's 'connection': the socket passed the handshake (handshake.ts). */
  open(socket: SyncSocket<User>): void {
    const { context: ctx, events, budget, limiter, sessions } = this.deps;
    const { options, logger, stats } = ctx;
    const log = logger.child({ socket: socket.id, clientId: socket.data.clientId });
    log.debug('client connected');
    // Attached in the same synchronous step that makes the socket receive messages, so no message precedes it.
    const meter = new FrameMeter(this.turns);
    socket.conn.on('packet', meter.onPacket);
    const info = () => ({ socketId: socket.id, ...socket.data });
    events.emit('client-connect', info());
    const guard = new ConnectionGuard({ maxQueued: options.maxQueuedMessages, maxUnsentBytes: options.maxUnsentBytes }, socket.conn as unknown as EngineConnection, (reason) => {
      log.warn({ code: reason.code, reason: reason.message }, 'connection dropped');
      events.emit('client-dropped', { clientId: socket.data.clientId, reason: reason.code as DropReason });
      socket.emit(MESSAGE.error, reason.toWire());
      socket.disconnect(true);
    }, budget);
    this.guards.set(socket.id, guard);
    this.replaceEarlierConnections(socket);
    socket.emit(MESSAGE.welcome, {
      serverTime: Date.now(),
      limits: {
        maxPayloadBytes: options.maxPayloadBytes,
        maxEventsPerPush: options.maxEventsPerPush,
        maxPullLimit: options.maxPullLimit,
        maxClockDrift: options.maxClockDrift === false ? null : options.maxClockDrift,
        maxAttachmentBytes: ctx.blobs ? options.maxAttachmentBytes : null,
      },
      heartbeatInterval: options.heartbeatInterval,
      expiresAt: socket.data.expiresAt ?? null,
    });
    // The session's end, moved by each renewal.
    const expiry = sessionExpiry(socket, log);
    expiry.arm();
    socket.once('disconnect', () => expiry.cancel());
    const handlers = {
      [MESSAGE.subscribe]: handleSubscribe,
      [MESSAGE.push]: handlePush,
      [MESSAGE.pull]: handlePull,
      [MESSAGE.blobState]: handleBlobState,
      [MESSAGE.blobUpload]: handleBlobUpload,
      [MESSAGE.blobDownload]: handleBlobDownload,
      [MESSAGE.renew]: async (_ctx: ServerContext<User>, _socket: SyncSocket<User>, raw: unknown) => {
        await sessions.renew(socket, raw);
        // Not for a connection that ended while authenticate ran: its timer would outlive it.
        if (socket.connected) expiry.arm();
        return { expiresAt: socket.data.expiresAt ?? null };
      },
    } as Record<string, Handler<User>>;

    // One listener for every message, so that unknown types, missing acks and limits are answered too.
    socket.onAny((event: string, ...args: unknown[]) => {
      // Dropped: what was already read of its flood is not answered.
      if (guard.closed) return;
      socket.data.lastSeen = Date.now();
      const ack = typeof args[args.length - 1] === 'function' ? (args.pop() as (reply: Ack<object>) => void) : undefined;
      // A reply that cannot be encoded must not become an unhandled rejection that takes the process down.
      const send = (message: Ack<object>) => {
        try {
          if (ack) ack(message);
          else if (!message.ok) socket.emit(MESSAGE.error, message.error);
        } catch (error) {
          log.error({ err: error, type: event }, 'could not send a reply');
        }
        guard.checkUnsent();
      };
      const reply = (error: SyncError) => {
        stats.invalidMessages += error.code === 'INVALID_MESSAGE' ? 1 : 0;
        send({ ok: false, error: error.toWire() });
      };
      const type = String(event).slice(0, 128);
      const limited = limiter?.check(socket.id, socket.data.userKey);
      if (limited) {
        if (limited.flooding) {
          guard.fail(new SyncError('TOO_MANY_REQUESTS', 'went on sending while rate limited: the connection is closed', limited.error.is('RATE_LIMITED') ? limited.error.details : undefined));
        } else {
          reply(limited.error);
        }
        return;
      }
      // Stringified only when the frames that carried it do not already prove it small enough.
      const limit = options.maxPayloadBytes;
      if (meter.bound() > limit) {
        const bytes = payloadBytes(args);
        if (bytes > limit) {
          if (!guard.refusedOversized(limit)) reply(new SyncError('PAYLOAD_TOO_LARGE', `message "${type}" of ${bytes} bytes exceeds maxPayloadBytes (${limit})`, { type, bytes, limit }));
          return;
        }
      }
      if (!CLIENT_MESSAGES.has(event)) {
        reply(new SyncError('INVALID_MESSAGE', `unknown message type "${type}"`, { type }));
        return;
      }
      if (!ack) {
        reply(new SyncError('INVALID_MESSAGE', `message "${event}" needs an acknowledgement callback`, { type: event }));
        return;
      }
      // In turn: one message of this connection at a time, so one socket cannot queue unbounded work.
      guard.enqueue(() =>
        handlers[event]!(ctx, socket, args[0]).then(
          (result) => send({ ok: true, ...result }),
          (error: unknown) => {
            const syncError = SyncError.from(error);
            if (syncError.code === 'INTERNAL') log.error({ err: error, type: event }, 'message failed');
            else log.info({ code: syncError.code, reason: syncError.message, type: event }, 'message refused');
            reply(syncError);
          },
        ),
      );
    });
    socket.on('disconnect', (reason) => {
      guard.close();
      this.guards.delete(socket.id);
      sessions.forget(socket.id);
      socket.conn.off('packet', meter.onPacket);
      limiter?.forgetConnection(socket.id);
      log.debug({ reason }, 'client disconnected');
      events.emit('client-disconnect', { ...info(), reason });
    });
  }

  /**
   * One live connection per client id: an earlier one, on this instance or
   * (through the adapter) another, is a link that dropped without closing or
   * a copy of the device, and the new connection replaces it.
   */
  private replaceEarlierConnections(socket: SyncSocket<User>): void {
    const { io } = this.deps.context;
    const room = `client:${socket.data.clientId}`;
    // Made only when something is replaced: an error with its stack for each of ten thousand reconnecting devices was a few % of a storm.
    const reason = () => new SyncError('REPLACED', 'another connection with the same client id replaced this one').toWire();
    for (const earlier of io.of('/').adapter.rooms.get(room) ?? []) {
      const other = io.of('/').sockets.get(earlier);
      if (!other || other.id === socket.id) continue;
      this.deps.events.emit('client-dropped', { clientId: socket.data.clientId, reason: 'REPLACED' });
      other.emit(MESSAGE.error, reason());
      other.disconnect(true);
    }
    void socket.join(room);
    // Other instances hear it through the adapter; with socket.io's own adapter there are none.
    if (Object.getPrototypeOf(io.of('/').adapter) !== Adapter.prototype) {
      io.in(room).except(socket.id).emit(MESSAGE.error, reason());
      io.in(room).except(socket.id).disconnectSockets(true);
    }
  }
}
