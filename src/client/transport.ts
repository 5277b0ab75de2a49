/** The socket.io connection to the sync server: typed requests with acknowledgements, validated replies. */
import { io, type Socket } from 'socket.io-client';
import type { z } from 'zod';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { withoutNode } from '../shared/hlc.js';
import {
  MESSAGE,
  PROTOCOL_VERSION,
  PROTOCOL_VERSIONS,
  ackSchema,
  liveMessageSchema,
  parseMessage,
  fromPullPage,
  toPushRows,
  pullPageSchema,
  pullReplySchema,
  pushReplySchema,
  pushReplyV1Schema,
  subscribeReplySchema,
  toPushOutcome,
  type ClientToServerEvents,
  type LiveMessage,
  type PullMessage,
  type PullPage,
  type PullReply,
  type WirePullReply,
  completeRemoteEvent,
  type ProtocolVersion,
  type PushedEvent,
  type PushOutcome,
  type PushReply,
  type PushReplyV1,
  type ServerToClientEvents,
  type SubscribeMessage,
  type SubscribeReply,
  type SyncEvent,
} from '../shared/protocol.js';
import { isLiveMessage, isPullPageAck, isStoredPushAck } from '../shared/wire-checks.js';
import type { ResolvedClientOptions } from './options.js';

export interface TransportEvents {
  onConnect(): void;
  onDisconnect(reason: string): void;
  onConnectError(error: SyncError): void;
  onLive(message: LiveMessage): void;
  onServerError(error: SyncError): void;
}

const pushAck = ackSchema(pushReplySchema);
const pushAckV1 = ackSchema(pushReplyV1Schema);
const pullAck = ackSchema(pullReplySchema);
const pullPageAck = ackSchema(pullPageSchema);
const subscribeAck = ackSchema(subscribeReplySchema);

export class Transport {
  private readonly socket: Socket<ServerToClientEvents, ClientToServerEvents>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private refusedAttempts = 0;
  private wanted = false;
  /** The version spoken: this release's, until a server says it speaks only older ones. */
  private protocol: ProtocolVersion = PROTOCOL_VERSION;
  /** Set while the connection is being made again in an older protocol (see fallBack()). */
  private fallingBack = false;

  constructor(
    private readonly options: ResolvedClientOptions,
    private readonly clientId: string,
    private readonly events: TransportEvents,
    private readonly logger: Logger,
  ) {
    const { retryDelay, useExponentialBackoff } = options.retry;
    this.socket = io(options.serverUrl, {
      path: options.path,
      autoConnect: false,
      // A Manager of its own: socket.io-client otherwise caches one per URL, and its auth callback
      // would keep this transport, the engine and the closed database alive.
      forceNew: true,
      transports: options.useWebSockets ? ['websocket'] : ['polling'],
      // socket.io's own reconnection: exponential backoff with jitter, forever.
      reconnection: true,
      reconnectionDelay: retryDelay,
      reconnectionDelayMax: useExponentialBackoff ? Math.max(retryDelay, 30_000) : retryDelay,
      randomizationFactor: 0.5,
      // Asked again on every connection attempt, so an expired token is replaced.
      auth: (callback) => {
        this.resolveToken().then(
          (token) => callback({ protocolVersion: this.protocol, clientId, ...(token ? { token } : {}) }),
          (error: unknown) => {
            this.logger.warn({ err: error }, 'authToken function failed');
            callback({ protocolVersion: this.protocol, clientId });
          },
        );
      },
    });
    this.socket.on('connect', () => {
      this.refusedAttempts = 0;
      this.events.onConnect();
    });
    this.socket.on('disconnect', (reason) => {
      this.events.onDisconnect(reason);
      // A server-side disconnect (for instance an expired token) is not retried by socket.io itself.
      if (reason === 'io server disconnect' && this.wanted) this.scheduleReconnect();
    });
    this.socket.on('connect_error', (error: Error & { data?: unknown }) => {
      const data = error.data as { code?: string; message?: string; details?: unknown } | undefined;
      // Decided here, by the first connect_error listener, for the others that follow (waitForConnection's).
      this.fallingBack = this.fallBack(data);
      if (this.fallingBack) return;
      const syncError =
        data && typeof data.code === 'string'
          ? SyncError.fromWire(data as never)
          : new SyncError('NOT_CONNECTED', `cannot reach sync server ${options.serverUrl}: ${error.message}`);
      this.events.onConnectError(syncError);
      // A refusal by the server's middleware is final for socket.io; we retry with backoff and a fresh token.
      if (!this.socket.active && this.wanted) this.scheduleReconnect();
    });
    this.socket.on(MESSAGE.live, (raw: unknown) => {
      try {
        const message = parseMessage(liveMessageSchema, raw, 'live message from server', isLiveMessage);
        this.events.onLive({ events: message.events.map(completeRemoteEvent) });
      } catch (error) {
        this.events.onServerError(SyncError.from(error));
      }
    });
    this.socket.on(MESSAGE.error, (raw: unknown) => {
      const wire = raw as { code?: unknown; message?: unknown };
      this.events.onServerError(
        typeof wire?.message === 'string' && typeof wire.code === 'string'
          ? SyncError.fromWire(wire as never)
          : new SyncError('INVALID_MESSAGE', 'malformed error message from server'),
      );
    });
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /**
   * A server of an earlier release refuses this protocol version, naming
   * those it speaks (one from before versions were named only refuses):
   * connect again at once in the newest older version both speak. Only ever
   * down, so a refusal cannot bounce between versions; a refusal with no
   * older version left is an error like any other, retried with backoff.
   * The transport keeps the version it fell back to, so a server upgraded
   * meanwhile is spoken to in the older version until the app starts again
   * (which it serves all the same).
   */
  private fallBack(refusal: { code?: string; details?: unknown } | undefined): boolean {
    if (refusal?.code !== 'UNSUPPORTED_PROTOCOL' || !this.wanted) return false;
    const supported = (refusal.details as { supported?: unknown } | undefined)?.supported;
    const older = PROTOCOL_VERSIONS.filter((version) => version < this.protocol && (!Array.isArray(supported) || supported.includes(version)));
    if (older.length === 0) return false;
    const version = Math.max(...older) as ProtocolVersion;
    this.logger.info({ refused: this.protocol, version }, 'the server speaks an earlier protocol version; connecting in that one');
    this.protocol = version;
    this.socket.connect();
    return true;
  }

  connect(): void {
    this.wanted = true;
    if (!this.socket.connected && !this.socket.active) this.socket.connect();
  }

  disconnect(): void {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.socket.disconnect();
  }

  /** Disconnects for good and lets go of every listener. */
  close(): void {
    this.disconnect();
    this.socket.removeAllListeners();
    this.socket.io.removeAllListeners();
  }

  /** Resolves once connected; rejects on the next failed attempt or after `timeout` ms. */
  waitForConnection(timeout: number): Promise<void> {
    if (this.socket.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.socket.off('connect', onConnect);
        this.socket.off('connect_error', onError);
      };
      const onConnect = () => {
        cleanup();
        resolve();
      };
      const onError = (error: Error & { data?: unknown }) => {
        // Not a failure: the transport is connecting again in a protocol version the server speaks.
        if (this.fallingBack) return;
        cleanup();
        const data = error.data as { code?: string } | undefined;
        reject(data && typeof data.code === 'string' ? SyncError.fromWire(data as never) : new SyncError('NOT_CONNECTED', `cannot reach sync server ${this.options.serverUrl}: ${error.message}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new SyncError('NOT_CONNECTED', `not connected to ${this.options.serverUrl} within ${timeout} ms`));
      }, timeout);
      this.socket.on('connect', onConnect);
      this.socket.on('connect_error', onError);
    });
  }

  subscribe(message: SubscribeMessage): Promise<SubscribeReply> {
    return this.request(MESSAGE.subscribe, message, subscribeAck);
  }

  /** Pushes events; resolves with one outcome per event, in order, whatever the protocol version. */
  async push(events: readonly SyncEvent[]): Promise<PushOutcome[]> {
    if (this.protocol === 1) {
      const { results } = await this.request<PushReplyV1>(MESSAGE.push, { events }, pushAckV1);
      if (results.length !== events.length || results.some((result, i) => result.id !== events[i]!.id)) throw mismatch();
      return results.map(toPushOutcome);
    }
    const message = this.protocol >= 4 ? toPushRows(events, this.clientId) : { events: events.map((event) => slim(event, this.clientId)) };
    const { results } = await this.request<PushReply>(MESSAGE.push, message, pushAck, isStoredPushAck);
    if (results.length !== events.length) throw mismatch();
    return results;
  }

  async pull(message: PullMessage): Promise<PullReply> {
    if (this.protocol >= 3) {
      const page = await this.request<PullPage>(MESSAGE.pull, message, pullPageAck, isPullPageAck);
      return { events: fromPullPage(page), checkpoint: page.checkpoint, hasMore: page.hasMore };
    }
    const reply = await this.request<WirePullReply>(MESSAGE.pull, message, pullAck);
    return Object.assign(reply, { events: reply.events.map(completeRemoteEvent) });
  }

  private async request<R>(type: keyof ClientToServerEvents, message: unknown, schema: z.ZodType, quick?: (value: unknown) => boolean): Promise<R> {
    if (!this.socket.connected) throw new SyncError('NOT_CONNECTED', 'not connected to the sync server');
    let raw: unknown;
    try {
      raw = await (this.socket.timeout(this.options.requestTimeout) as unknown as Socket).emitWithAck(type, message);
    } catch (error) {
      // socket.io fails a request in flight at once when the connection drops: that is no timeout.
      if (!this.socket.connected) throw new SyncError('NOT_CONNECTED', `the connection to the sync server was lost before it answered ${type}`);
      throw new SyncError('TIMEOUT', `no answer to ${type} within ${this.options.requestTimeout} ms: ${SyncError.from(error).message}`);
    }
    const reply = parseMessage(schema, raw, `reply to ${type}`, quick) as { ok: true } | { ok: false; error: never };
    if (!reply.ok) throw SyncError.fromWire(reply.error);
    return reply as R;
  }

  private scheduleReconnect(): void {
    clearTimeout(this.reconnectTimer);
    const { retryDelay, useExponentialBackoff } = this.options.retry;
    const exponent = useExponentialBackoff ? Math.min(this.refusedAttempts, 10) : 0;
    const delay = Math.min(retryDelay * 2 ** exponent, 60_000) * (0.5 + Math.random());
    this.refusedAttempts++;
    this.reconnectTimer = setTimeout(() => {
      if (this.wanted && !this.socket.connected && !this.socket.active) this.socket.connect();
    }, delay);
  }

  private async resolveToken(): Promise<string | undefined> {
    const { authToken } = this.options;
    if (typeof authToken === 'function') return (await authToken()) ?? undefined;
    return authToken;
  }
}

const mismatch = () => new SyncError('INVALID_MESSAGE', 'the server answered a push with results that do not match its events');

/** An event as protocols 2 and 3 push it (4 pushes rows, see toPushRows): without a null base, and without the node of a clock that is this client's. */
function slim(event: SyncEvent, clientId: string): PushedEvent {
  const pushed: PushedEvent = { id: event.id, collection: event.collection, documentId: event.documentId, op: event.op, data: event.data, hlc: withoutNode(event.hlc, clientId) };
  if (event.patch) pushed.patch = event.patch;
  if (event.baseEventId !== null) pushed.baseEventId = event.baseEventId;
  return pushed;
}
