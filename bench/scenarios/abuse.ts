/**
 * Abuse: one socket floods this project's server, run with its default
 * options in a child process of its own (bench/lib/abuse-server.ts), while a
 * well-behaved client (the bystander) pulls a page of 100 documents every
 * 10 ms, each waiting for its answer. Per kind of flood: how long until the
 * server disconnects the flooder (target ≤ 2 s), the bystander's round-trip
 * p50/p99 from the flood's start until a second after that disconnect, and
 * the server's RSS before, at its peak, and 3 s after the flooder left
 * (target: growth ≤ 200 MB). The row `none` is the same without a flooder.
 * Each kind gets a fresh server, seeded with 20k documents so pulls work.
 * Flooders are hand-written socket.io clients over a bare WebSocket
 * (lib/raw-socket.ts), frames encoded once, so flooding costs the bench
 * process, which also runs the bystander, as little as can be.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MESSAGE, PROTOCOL_VERSION, toPushRows, type SyncEvent } from 'rxdb-offline-sync/protocol';
import type { Socket } from 'socket.io-client';
// Only to stamp the flooders' prepared events, before anything is measured.
import { formatHlc } from '../../src/shared/hlc.js';
import type { ServerReport, ServerRequest } from '../lib/abuse-server.js';
import { makeTodos } from '../lib/documents.js';
import { connectOwnSocket } from '../lib/listen.js';
import { RawSocketIo } from '../lib/raw-socket.js';
import { readyReport, sleep, withTimeout } from '../lib/runtime.js';
import { withoutThisProject, type Measurement, type Scenario } from '../lib/scenario.js';
import { percentile } from '../lib/stats.js';

const SEEDED = 20_000;
const WARMUP_MS = 500;
/** The window of the row without a flooder. */
const QUIET_MS = 3000;
/** A flooder still connected after this long is stopped and reported as never disconnected. */
const FLOOD_MAX_MS = 5000;
/** The bystander's window goes on this long after the flooder was disconnected. */
const AFTER_DROP_MS = 1000;
/** RSS is read again this long after the flooder left. */
const SETTLE_MS = 3000;
const BYSTANDER_EVERY_MS = 10;
const BYSTANDER_PAGE = 100;
const TARGET_DISCONNECT_MS = 2000;
const TARGET_RSS_GROWTH_MB = 200;

interface Flooding {
  stop(): void;
  readonly sent: number;
}

interface FloodKind {
  name: string;
  /** Reads nothing the server sends: the TCP socket is paused once connected. */
  paused?: boolean;
  /** Builds what the flood sends (untimed); returns the function that starts it. */
  prepare(clientId: string): (socket: RawSocketIo) => Flooding;
}

const pullJson = (limit: number) => JSON.stringify({ checkpoint: 0, collections: ['todos'], limit });

const KINDS: readonly FloodKind[] = [
  {
    // (a) Pulls of the plugin's page size, sent as fast as the socket takes them, no answer awaited.
    name: 'pulls',
    prepare: () => (socket) => pump(socket, () => socket.frame(MESSAGE.pull, pullJson(2000)), 1 << 20),
  },
  {
    // (b) Pushes of 1000 new documents each, back to back, no answer awaited.
    name: 'pushes',
    prepare(clientId) {
      const payloads = preparePushes(clientId, 40, 1000);
      let next = 0;
      // Past the prepared ones, pushes repeat (duplicates, cheaper for the server): a flooder should be gone long before.
      return (socket) => pump(socket, () => socket.frame(MESSAGE.push, payloads[next++ % payloads.length]!), 4 << 20);
    },
  },
  {
    // (c) Malformed messages: bad pulls, pushes and subscriptions with acknowledgements, and unknown or unacknowledged ones.
    name: 'invalid',
    prepare() {
      const frames: [string, string, boolean][] = [
        [MESSAGE.pull, '{"checkpoint":"zero","collections":["todos"]}', true],
        [MESSAGE.push, '{"events":"nope"}', true],
        [MESSAGE.push, '{"collections":["todos"],"events":[["x",0,"d","insert",{},"not a clock"]]}', true],
        [MESSAGE.subscribe, '{"collections":[1,2,3]}', true],
        [MESSAGE.pull, pullJson(10), false],
        ['sync:bogus', '{}', true],
        [MESSAGE.pull, 'null', true],
      ];
      return (socket) => pumpFrames(socket, frames);
    },
  },
  {
    // (c') Invalid messages the server answers at once without queueing them: only the rate limit stands in their way.
    name: 'unqueued',
    prepare() {
      const frames: [string, string, boolean][] = [
        ['sync:bogus', '{}', true],
        [MESSAGE.pull, pullJson(10), false],
        ['hello', '"world"', true],
        [MESSAGE.push, '{"events":[]}', false],
      ];
      return (socket) => pumpFrames(socket, frames);
    },
  },
  {
    // (c'') Pushes over maxPayloadBytes (4 MiB) and under socket.io's maxHttpBufferSize (twice that):
    // parsed whole by socket.io, then measured and refused with PAYLOAD_TOO_LARGE.
    name: 'oversized',
    prepare(clientId) {
      const [payload] = preparePushes(clientId, 1, 20_000);
      // No acknowledgement: the size is refused before that is looked at, and one Buffer can go again and again.
      const frame = Buffer.from(`42["${MESSAGE.push}",${payload!}]`);
      return (socket) => pump(socket, () => frame, 16 << 20, 4);
    },
  },
  {
    // (d) A socket that never reads: pulls of 5000 documents (maxPullLimit) 50 times a second, within
    // the rate limit and the queue, whose answers pile up unread.
    name: 'unread',
    paused: true,
    prepare: () => (socket) => paced(socket, () => socket.frame(MESSAGE.pull, pullJson(5000)), 20),
  },
];

/**
 * Sends frames from `next` as fast as the socket takes them: a burst per
 * turn of the event loop while under `highWater` buffered bytes, so that
 * the bystander in this process gets its turns too.
 */
function pump(socket: RawSocketIo, next: () => string | Buffer, highWater: number, burst = 256): Flooding {
  let sent = 0;
  let stopped = false;
  const turn = () => {
    if (stopped || !socket.open) return;
    let i = 0;
    for (; i < burst && socket.bufferedAmount < highWater; i++) socket.send(next());
    sent += i;
    if (i === 0) setTimeout(turn, 1);
    else setImmediate(turn);
  };
  turn();
  return {
    stop: () => void (stopped = true),
    get sent() {
      return sent;
    },
  };
}

/** Sends `frames` over and over, as fast as the socket takes them. */
function pumpFrames(socket: RawSocketIo, frames: readonly [event: string, payload: string, ack: boolean][]): Flooding {
  let next = 0;
  return pump(socket, () => {
    const [event, payload, ack] = frames[next++ % frames.length]!;
    return socket.frame(event, payload, ack);
  }, 1 << 20);
}

/** Sends a frame from `next` every `everyMs`. */
function paced(socket: RawSocketIo, next: () => string, everyMs: number): Flooding {
  let sent = 0;
  const timer = setInterval(() => {
    if (!socket.open) return;
    socket.send(next());
    sent++;
  }, everyMs);
  return {
    stop: () => clearInterval(timer),
    get sent() {
      return sent;
    },
  };
}

/** `count` push payloads (protocol 4 rows, JSON) of `size` new documents each. */
function preparePushes(clientId: string, count: number, size: number): string[] {
  const todos = makeTodos(count * size, `flood-${clientId.slice(-8)}`, 7);
  const millis = Date.now();
  const payloads: string[] = [];
  for (let p = 0; p < count; p++) {
    const events: SyncEvent[] = todos.slice(p * size, (p + 1) * size).map((todo, i) => ({
      id: randomUUID(),
      collection: 'todos',
      documentId: todo.id,
      op: 'insert',
      data: { ...todo },
      baseEventId: null,
      hlc: formatHlc({ millis, counter: p * size + i, node: clientId }),
    }));
    payloads.push(JSON.stringify(toPushRows(events, clientId)));
  }
  return payloads;
}

type Stats = Extract<ServerReport, { type: 'stats' }>;
type Departure = { at: number; reason: string; dropped?: string };

/** The server's child process, as the scenario talks to it over IPC. */
class ServerChild {
  private nextRequest = 0;
  private readonly pending = new Map<number, (stats: Stats) => void>();
  private readonly dropped = new Map<string, string>();
  private readonly departures = new Map<string, Departure>();
  private readonly waiting = new Map<string, (departure: Departure) => void>();

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
  ) {
    child.on('message', (report: ServerReport) => {
      if (report.type === 'stats') {
        this.pending.get(report.id)?.(report);
        this.pending.delete(report.id);
      } else if (report.type === 'dropped') {
        this.dropped.set(report.clientId, report.reason);
      } else if (report.type === 'disconnect') {
        const departure: Departure = { at: report.at, reason: report.reason, ...(this.dropped.has(report.clientId) ? { dropped: this.dropped.get(report.clientId)! } : {}) };
        this.departures.set(report.clientId, departure);
        this.waiting.get(report.clientId)?.(departure);
      }
    });
  }

  static async start(seed: number): Promise<ServerChild> {
    const entry = fileURLToPath(new URL('../lib/abuse-server.ts', import.meta.url));
    // The same loader flags (tsx) and tsconfig as this process; the log to stdout goes nowhere.
    const child = fork(entry, [String(seed)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const { port } = await readyReport<ServerReport>(child, 'the abuse server');
    return new ServerChild(child, port);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  stats(request: Omit<Extract<ServerRequest, { type: 'stats' }>, 'type' | 'id'> = {}): Promise<Stats> {
    const id = this.nextRequest++;
    const answer = new Promise<Stats>((resolve) => this.pending.set(id, resolve));
    this.child.send({ type: 'stats', id, ...request } satisfies ServerRequest);
    return withTimeout(answer, 30_000, 'the abuse server to report its memory');
  }

  /** Resolves when the server has disconnected `clientId`, with when and why. */
  departure(clientId: string): Promise<Departure> {
    const known = this.departures.get(clientId);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => this.waiting.set(clientId, resolve));
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.send({ type: 'exit' } satisfies ServerRequest);
    try {
      await withTimeout(exited, 5000, 'the abuse server to exit');
    } catch {
      this.child.kill('SIGKILL');
      await exited;
    }
  }
}

/** The well-behaved client: a pull of one page every BYSTANDER_EVERY_MS, each after the answer to the last. */
class Bystander {
  private readonly samples: { at: number; ms: number }[] = [];
  readonly errors: string[] = [];
  private stopped = false;
  private readonly done: Promise<void>;

  private constructor(private readonly socket: Socket) {
    this.done = this.run();
  }

  static async connect(url: string): Promise<Bystander> {
    return new Bystander(await connectOwnSocket(url, { protocolVersion: PROTOCOL_VERSION, clientId: `bystander-${randomUUID()}` }));
  }

  private async run(): Promise<void> {
    const pull = { checkpoint: 0, collections: ['todos'], limit: BYSTANDER_PAGE };
    while (!this.stopped) {
      const at = Date.now();
      const started = performance.now();
      try {
        const reply = (await this.socket.timeout(10_000).emitWithAck(MESSAGE.pull, pull)) as { ok: boolean; error?: { code: string } };
        if (reply.ok) this.samples.push({ at, ms: performance.now() - started });
        else this.errors.push(reply.error?.code ?? 'unknown');
      } catch (error) {
        this.errors.push((error as Error).message);
        if (!this.socket.connected) return;
      }
      const wait = BYSTANDER_EVERY_MS - (performance.now() - started);
      if (wait > 0) await sleep(wait);
    }
  }

  /** Round trips of the pulls sent from `from` to `to` (Date.now() times). */
  between(from: number, to: number): number[] {
    return this.samples.filter((sample) => sample.at >= from && sample.at < to).map((sample) => sample.ms);
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.done;
    this.socket.close();
  }
}

interface Row {
  kind: string;
  sent?: number;
  disconnectMs?: number;
  code?: string;
  /** The errors the flooder was answered with, and how many of each. */
  answers: string;
  p50: number;
  p99: number;
  pulls: number;
  bystanderErrors: string[];
  rssBefore: number;
  rssPeak: number;
  rssAfter: number;
  rssAfterGc: number;
  loopMaxMs: number;
  /** The server's CPU time over the window, in percent of one core. */
  cpuPercent: number;
  /** Pushed events the server stored during the window (none but the flooder pushes). */
  stored: number;
  load: number;
}

async function measure(kind: FloodKind | undefined): Promise<Row> {
  const server = await ServerChild.start(SEEDED);
  let flooder: RawSocketIo | undefined;
  let bystander: Bystander | undefined;
  try {
    bystander = await Bystander.connect(server.url);
    const clientId = `flooder-${kind?.name ?? 'none'}-${randomUUID()}`;
    const start = kind?.prepare(clientId);
    if (kind) {
      flooder = await RawSocketIo.connect(server.url, { protocolVersion: PROTOCOL_VERSION, clientId });
      if (kind.paused) flooder.pause();
    }
    await sleep(WARMUP_MS);
    const before = await server.stats({ reset: true });
    const started = Date.now();
    let departure: Departure | undefined;
    let sent: number | undefined;
    if (start && flooder) {
      const flooding = start(flooder);
      departure = await Promise.race([server.departure(clientId), sleep(FLOOD_MAX_MS).then(() => undefined)]);
      flooding.stop();
      sent = flooding.sent;
      await sleep(departure ? departure.at + AFTER_DROP_MS - Date.now() : 0);
      flooder.close();
    } else {
      await sleep(QUIET_MS);
    }
    const ended = Date.now();
    const during = await server.stats();
    await sleep(SETTLE_MS);
    const after = await server.stats();
    const afterGc = await server.stats({ gc: true });
    const latencies = bystander.between(started, ended);
    const code = departure ? (departure.dropped ?? departure.reason) : kind ? 'still connected' : undefined;
    return {
      kind: kind?.name ?? 'none',
      ...(sent !== undefined ? { sent } : {}),
      ...(departure ? { disconnectMs: departure.at - started } : {}),
      ...(code ? { code } : {}),
      answers: [...(flooder?.errors ?? [])].map(([name, count]) => `${name}×${count}`).join(' ') || '—',
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      pulls: latencies.length,
      bystanderErrors: [...bystander.errors],
      rssBefore: before.rssMb,
      rssPeak: Math.max(during.peakRssMb, after.peakRssMb),
      rssAfter: after.rssMb,
      rssAfterGc: afterGc.rssMb,
      loopMaxMs: during.loopMaxMs,
      cpuPercent: (100 * during.cpuMs) / during.wallMs,
      stored: during.accepted - before.accepted,
      load: loadavg()[0]!,
    };
  } finally {
    flooder?.close();
    await bystander?.close();
    await server.stop();
  }
}

const fixed = (value: number | undefined, digits = 1) => (value === undefined || Number.isNaN(value) ? '—' : value.toFixed(digits));

function table(rows: readonly Row[]): string[] {
  const header = ['flood', 'sent', 'dropped after', 'why', 'answers', 'bystander p50', 'p99', 'pulls', 'RSS before', 'peak', '+3 s', 'after GC', 'stored', 'server CPU', 'loop max', 'load', 'targets'];
  const lines = rows.map((row) => {
    const misses: string[] = [];
    if (row.kind !== 'none' && !(row.disconnectMs !== undefined && row.disconnectMs <= TARGET_DISCONNECT_MS)) misses.push('disconnect');
    if (row.rssPeak - row.rssBefore > TARGET_RSS_GROWTH_MB) misses.push('peak RSS');
    if (row.rssAfter - row.rssBefore > TARGET_RSS_GROWTH_MB) misses.push('RSS after');
    if (row.bystanderErrors.length > 0) misses.push(`bystander: ${row.bystanderErrors.length} errors (${[...new Set(row.bystanderErrors)].join(', ')})`);
    return [
      row.kind,
      row.sent === undefined ? '—' : String(row.sent),
      row.disconnectMs === undefined ? (row.kind === 'none' ? '—' : `> ${FLOOD_MAX_MS} ms`) : `${row.disconnectMs} ms`,
      row.code ?? '—',
      row.answers,
      `${fixed(row.p50, 2)} ms`,
      `${fixed(row.p99, 2)} ms`,
      String(row.pulls),
      `${fixed(row.rssBefore, 0)} MB`,
      `${fixed(row.rssPeak, 0)} MB`,
      `${fixed(row.rssAfter, 0)} MB`,
      `${fixed(row.rssAfterGc, 0)} MB`,
      String(row.stored),
      `${fixed(row.cpuPercent, 0)} %`,
      `${fixed(row.loopMaxMs, 0)} ms`,
      fixed(row.load, 2),
      misses.length === 0 ? 'met' : `missed: ${misses.join('; ')}`,
    ];
  });
  const all = [header, ...lines];
  const widths = header.map((_, i) => Math.max(...all.map((line) => line[i]!.length)));
  return all.map((line) => line.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

export const abuse: Scenario = {
  name: 'abuse',
  async run({ systems, record, log }) {
    if (withoutThisProject({ systems, log }, 'abuse')) return;
    const rows: Row[] = [];
    for (const kind of [undefined, ...KINDS]) {
      const row = await measure(kind);
      rows.push(row);
      log(`abuse ${row.kind}: ${row.disconnectMs !== undefined ? `dropped after ${row.disconnectMs} ms (${row.code}), ` : ''}bystander p50 ${fixed(row.p50, 2)} ms, p99 ${fixed(row.p99, 2)} ms; server RSS ${fixed(row.rssBefore, 0)} → peak ${fixed(row.rssPeak, 0)} → ${fixed(row.rssAfter, 0)} MB`);
      const base = { scenario: 'abuse', system: 'offline-sync', n: SEEDED, note: row.code ? `flood ${row.kind}: ${row.code}` : `flood ${row.kind}` } as const;
      const figure = (metric: string, unit: Measurement['unit'], value: number | undefined) => {
        if (value !== undefined && !Number.isNaN(value)) record({ ...base, metric: `${row.kind}-${metric}`, unit, value, runs: [value] });
      };
      figure('p50', 'ms', row.p50);
      figure('p99', 'ms', row.p99);
      figure('disconnect', 'ms', row.disconnectMs);
      figure('rss-before', 'MB', row.rssBefore);
      figure('rss-peak', 'MB', row.rssPeak);
      figure('rss-after', 'MB', row.rssAfter);
    }
    for (const line of table(rows)) log(line);
  },
};
