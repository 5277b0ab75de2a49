/**
 * The scale scenario's protocol client: socket.io written by hand over a
 * bare WebSocket (engine.io 4, websocket transport only), as lib/raw-socket.ts
 * does for the abuse scenario's flooders, so that one process can hold
 * thousands of devices. It completes the handshake, answers pings, sends
 * requests and matches their acknowledgements, and hands live messages over
 * as text: subscribers scan them for sequences (scanLive) instead of parsing
 * every event of every message.
 *
 * Times are milliseconds of the system's monotonic clock (`clock`), the same
 * in every process of the machine, so that a time taken in one process can be
 * compared with one taken in another.
 */
import type { SyncServerOptions } from 'rxdb-offline-sync/server';
import WebSocket from 'ws';

/** The collection every device syncs. */
export const COLLECTION = 'items';
/** The plugin's CONNECT_TIMEOUT_MS. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * The limits a deployment for 10,000 devices sets, where the defaults are
 * made for a smaller one (or would take the load generator, all of whose
 * devices come from 127.0.0.1, for abuse):
 * - maxHandshakesPerSecond 2500 (default 1000): 10,000 devices back within
 *   about 4 s after a restart, SERVER_BUSY with retryAfterMs for the excess;
 * - rateLimit 5000 messages/s per connection and per user (default 300 and
 *   1500): a writer of this bench pushes one event per push, as fast as
 *   acknowledgements come;
 * - loginLimit 100,000 failed logins per address (default 30): every device
 *   here shares one address, as behind a carrier's NAT.
 * Each device is a user of its own (authenticate takes the token as the
 * user's id), so per-user limits and client-id claims apply as in production.
 */
export const SCALE_SERVER_OPTIONS = {
  maxHandshakesPerSecond: 2500,
  rateLimit: { windowMs: 1000, max: 5000, maxPerUser: 5000 },
  loginLimit: { windowMs: 60_000, perConnection: 5, perAddress: 100_000 },
} as const satisfies Partial<SyncServerOptions>;

/** socket.io packet types over engine.io's MESSAGE (4): CONNECT, EVENT, ACK, CONNECT_ERROR. */
const CONNECT = '40';
const EVENT = '42';
const ACK = '43';
const CONNECT_ERROR = '44';
const LIVE_PREFIX = `${EVENT}["sync:events",`;
const ERROR_PREFIX = `${EVENT}["sync:error",`;

/** Milliseconds of CLOCK_MONOTONIC: comparable between processes on one machine. */
export const clock = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Why a connection attempt failed, as the real client tells its causes apart. */
export class ConnectFailure extends Error {
  constructor(
    readonly kind: 'refused' | 'busy' | 'rejected' | 'timeout' | 'closed',
    message: string,
    /** SERVER_BUSY's (or another refusal's) retryAfterMs, when the server named one. */
    readonly retryAfterMs?: number,
    readonly code?: string,
  ) {
    super(message);
  }
}

export class LiteSocket {
  /** Called with the text of every live message and the time it arrived. */
  onLive?: (frame: string, at: number) => void;
  /** Called once when the connection ends (either side). */
  onClose?: () => void;
  /** `sync:error` codes the server sent, and how many of each. */
  readonly errors = new Map<string, number>();
  closed = false;
  private nextAck = 0;
  private readonly pending = new Map<number, { resolve(body: string): void; reject(error: Error): void }>();

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => this.onFrame(String(data)));
    ws.on('close', () => this.ended());
    ws.on('error', () => this.ended());
  }

  /**
   * Opens a connection and completes socket.io's CONNECT with `auth` (the
   * sync handshake); rejects with a ConnectFailure after `timeoutMs`, or
   * when the server refuses (with its retryAfterMs, if any) or is not there.
   */
  static connect(url: string, auth: Record<string, unknown>, timeoutMs: number): Promise<LiteSocket> {
    // No permessage-deflate (the server does not offer it by default) and an all-zero mask, which ws skips applying.
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false, generateMask: (mask) => void mask.fill(0) });
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (failure: ConnectFailure) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.removeAllListeners();
        ws.on('error', () => {});
        ws.terminate();
        reject(failure);
      };
      const timer = setTimeout(() => fail(new ConnectFailure('timeout', `no connection within ${timeoutMs} ms`)), timeoutMs);
      const onFrame = (data: WebSocket.RawData) => {
        const frame = String(data);
        if (frame.startsWith('0')) ws.send(`${CONNECT}${JSON.stringify(auth)}`);
        else if (frame === '2') ws.send('3');
        else if (frame.startsWith(CONNECT)) {
          settled = true;
          clearTimeout(timer);
          ws.off('message', onFrame);
          ws.removeAllListeners('error');
          ws.removeAllListeners('close');
          // Attached in this same step: the welcome that follows the CONNECT is not missed.
          resolve(new LiteSocket(ws));
        } else if (frame.startsWith(CONNECT_ERROR)) {
          let code: string | undefined;
          let retryAfterMs: number | undefined;
          let message = frame.slice(2);
          try {
            const body = JSON.parse(frame.slice(2)) as { message?: string; data?: { code?: string; details?: { retryAfterMs?: unknown } } };
            code = body.data?.code;
            message = body.message ?? message;
            const retry = body.data?.details?.retryAfterMs;
            if (typeof retry === 'number') retryAfterMs = retry;
          } catch {
            // Not JSON: kept as text.
          }
          fail(new ConnectFailure(code === 'SERVER_BUSY' ? 'busy' : 'rejected', `${code ?? 'refused'}: ${message}`, retryAfterMs, code));
        }
      };
      ws.on('message', onFrame);
      // The server's connection gate answers 503 with Retry-After to a connection it had no turn for.
      ws.on('unexpected-response', (_request, response) => {
        const seconds = Number(response.headers['retry-after']);
        const retryAfterMs = Number.isFinite(seconds) ? seconds * 1000 : undefined;
        response.resume();
        fail(new ConnectFailure(response.statusCode === 503 ? 'busy' : 'rejected', `HTTP ${response.statusCode}`, retryAfterMs));
      });
      ws.on('error', (error: NodeJS.ErrnoException) => fail(new ConnectFailure(error.code === 'ECONNREFUSED' ? 'refused' : 'closed', error.message)));
      ws.on('close', () => fail(new ConnectFailure('closed', 'closed during the handshake')));
    });
  }

  /** Sends `event` with `payloadJson` and resolves with the text of the acknowledgement's arguments (`[{"ok":…}]`). */
  request(event: string, payloadJson: string): Promise<string> {
    if (this.closed) return Promise.reject(new Error('the connection is closed'));
    const id = this.nextAck++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(`${EVENT}${id}[${JSON.stringify(event)},${payloadJson}]`);
    });
  }

  get open(): boolean {
    return !this.closed && this.ws.readyState === WebSocket.OPEN;
  }

  /** Leaves at once, without a closing handshake. */
  close(): void {
    this.ws.terminate();
    this.ended();
  }

  private ended(): void {
    if (this.closed) return;
    this.closed = true;
    for (const { reject } of this.pending.values()) reject(new Error('the connection closed'));
    this.pending.clear();
    this.onClose?.();
  }

  private onFrame(frame: string): void {
    if (frame.startsWith(LIVE_PREFIX)) {
      this.onLive?.(frame, clock());
    } else if (frame === '2') {
      // engine.io PING, answered as a live client does.
      this.ws.send('3');
    } else if (frame.startsWith(ACK)) {
      const body = frame.indexOf('[');
      const id = Number(frame.slice(2, body));
      const waiter = this.pending.get(id);
      if (!waiter) return;
      this.pending.delete(id);
      waiter.resolve(frame.slice(body));
    } else if (frame.startsWith(ERROR_PREFIX)) {
      const code = /"code":"([A-Z_]+)"/.exec(frame)?.[1] ?? 'unknown';
      this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
    }
  }
}

const SEQ_KEY = '"seq":';
const SENT_KEY = '"data":{"t":';

/**
 * Calls `each` with the sequence of every event of a live message's text and
 * the time its writer sent it (the `t` of the scale scenario's documents;
 * NaN for a document without one), without parsing the message: an event
 * is `{"id":…,"collection":…,"documentId":…,"op":…,"data":{…},"hlc":…,"seq":N,…}`
 * with its data before its sequence. Returns the number of events.
 */
export function scanLive(frame: string, each: (seq: number, sentAt: number) => void): number {
  let from = 0;
  let count = 0;
  for (;;) {
    const at = frame.indexOf(SEQ_KEY, from);
    if (at < 0) return count;
    const sent = frame.indexOf(SENT_KEY, from);
    const sentAt = sent >= 0 && sent < at ? Number.parseFloat(frame.slice(sent + SENT_KEY.length, sent + SENT_KEY.length + 32)) : Number.NaN;
    each(Number.parseInt(frame.slice(at + SEQ_KEY.length, at + SEQ_KEY.length + 20), 10), sentAt);
    count++;
    from = at + SEQ_KEY.length;
  }
}

/** The `checkpoint` and `hasMore` of a pull reply's text, read from its end without parsing its events. */
export function pullTail(body: string): { ok: boolean; checkpoint: number; hasMore: boolean; error?: { code?: string; details?: { retryAfterMs?: number } } } {
  if (body.startsWith('[{"ok":false')) {
    const reply = JSON.parse(body) as [{ error?: { code?: string; details?: { retryAfterMs?: number } } }];
    return { ok: false, checkpoint: Number.NaN, hasMore: false, ...(reply[0].error ? { error: reply[0].error } : {}) };
  }
  const at = body.lastIndexOf('"checkpoint":');
  const more = body.lastIndexOf('"hasMore":');
  if (at < 0 || more < 0) throw new Error(`not a pull reply: ${body.slice(0, 200)}`);
  return { ok: true, checkpoint: Number.parseInt(body.slice(at + 13, at + 33), 10), hasMore: body.startsWith('true', more + 10) };
}

/**
 * Latencies in fixed bins, mergeable across processes: 0.1 ms wide below
 * 100 ms, 1 ms below 1 s, 10 ms below 60 s, then one bin for the rest.
 */
export const HISTOGRAM_BINS = 1000 + 900 + 5900 + 1;

export function histogramBin(ms: number): number {
  if (!(ms > 0)) return 0;
  if (ms < 100) return Math.floor(ms * 10);
  if (ms < 1000) return 1000 + Math.floor(ms - 100);
  if (ms < 60_000) return 1900 + Math.floor((ms - 1000) / 10);
  return HISTOGRAM_BINS - 1;
}

/** The upper edge of a bin, in ms (the last bin: 60 s and more, reported as 60 s). */
export function binUpperMs(bin: number): number {
  if (bin < 1000) return (bin + 1) / 10;
  if (bin < 1900) return bin - 1000 + 101;
  return Math.min(60_000, (bin - 1900) * 10 + 1010);
}

/** Nearest-rank percentile of a histogram (the bin's upper edge); NaN when it is empty. */
export function histogramPercentile(bins: ArrayLike<number>, p: number): number {
  let total = 0;
  for (let i = 0; i < bins.length; i++) total += bins[i]!;
  if (total === 0) return Number.NaN;
  const rank = Math.max(1, Math.ceil((p / 100) * total));
  let seen = 0;
  for (let i = 0; i < bins.length; i++) {
    seen += bins[i]!;
    if (seen >= rank) return binUpperMs(i);
  }
  return binUpperMs(bins.length - 1);
}

/** Sparse form of a histogram for IPC: [bin, count] pairs of the bins in use. */
export const sparseBins = (bins: ArrayLike<number>): [number, number][] => {
  const pairs: [number, number][] = [];
  for (let i = 0; i < bins.length; i++) if (bins[i]! > 0) pairs.push([i, bins[i]!]);
  return pairs;
};
