/**
 * Scale: this project's server with thousands of devices (issue 22). The
 * server runs in a child process of its own (lib/scale-server.ts, SQLite in
 * a temp dir), the devices in a few others (lib/scale-clients.ts: thousands
 * of lightweight protocol clients each, lib/scale-socket.ts), and writers in
 * this process. Devices are added as the parts go up in size, so each device
 * connects once (and again after the server's restarts):
 *
 * 1. broadcast: at 1k / 3k / 10k subscribers, a writer pushes one event at a
 *    time, each once the one before reached every subscriber; time to all,
 *    p50/p99/max over 30 (after 3 unmeasured), and how many within 1 s.
 *    Target: 10k within 1 s, 30 of 30.
 * 2. sustained: at 1k and 3k subscribers, 16 writers push one event per
 *    push, each push after the answer to the last, for 5 s (after 1 s
 *    unmeasured); acknowledged writes per second that reached every
 *    subscriber, delivery p99 (writer's send to a subscriber's arrival, over
 *    every pair) and the writers' acknowledgement p99. Then again with the
 *    writers paced to 5 % above the target's rate: as fast as acks come,
 *    queues grow until something saturates, and delivery then measures the
 *    queue; paced, it measures what the target asks. Targets: ≥ 500/s to
 *    1k and ≥ 200/s to 3k with delivery p99 ≤ 500 ms; ack p99 ≤ 20 ms.
 * 3. storm: 2k and 10k devices hold a checkpoint; 50 events are written
 *    after it (the devices keep their checkpoint, as devices that had not
 *    applied them); the server is killed (SIGKILL) and started again on the
 *    same SQLite file and port; the devices reconnect as the plugin does
 *    (500–1000 ms jitter, retryAfterMs of SERVER_BUSY honoured, 10 s connect
 *    timeout) and pull from their checkpoint. Time from the new server
 *    listening until every device has caught up, the server's longest event
 *    loop stall meanwhile, connect timeouts. Targets: 10k within 10 s, no
 *    stall over 200 ms, no timeout.
 * 4. instances: two server processes on one fresh PostgreSQL database, with
 *    @socket.io/redis-adapter; 500 subscribers split across them, two
 *    writers on each for 5 s. The subscribers follow the plugin's engine
 *    (held live events, a gap pulled 100 ms after the last live message,
 *    with `have`); live events out of sequence order and sequences received
 *    twice (live or pulled) are counted. Target: no duplicate.
 *
 * The server is configured as a deployment for 10,000 devices would be
 * (SCALE_SERVER_OPTIONS: handshakes, rate and login limits raised above the
 * defaults, each device its own authenticated user). Every figure is
 * recorded as the other scenarios' are, the targets and whether they were
 * met in `note`; a table goes to stderr.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { PROTOCOL_VERSION, toPushRows, type SyncEvent } from 'rxdb-offline-sync/protocol';
// Only to stamp the writers' events.
import { formatHlc } from '../../src/shared/hlc.js';
// Types only: importing a child's entry would run it here.
import type { ClientsReport, ClientsRequest, ConnectStats, ExactStats, Mode } from '../lib/scale-clients.js';
import type { ScaleServerConfig, ScaleServerReport, ScaleServerRequest } from '../lib/scale-server.js';
import { COLLECTION, CONNECT_TIMEOUT_MS, HISTOGRAM_BINS, LiteSocket, SCALE_SERVER_OPTIONS, clock, histogramPercentile } from '../lib/scale-socket.js';
import { readyReport, sleep, withTimeout } from '../lib/runtime.js';
import { portOpen } from '../lib/storages.js';
import { withoutThisProject, type BenchConfig, type Measurement, type Scenario } from '../lib/scenario.js';
import { percentile } from '../lib/stats.js';

const POSTGRES = { host: '127.0.0.1', port: 5432, user: 'postgres' };
const REDIS = { host: '127.0.0.1', port: 6379, url: 'redis://127.0.0.1:6379' };

const BROADCAST_WARMUP = 3;
/** A broadcast not at every subscriber after this long counts as lost; three in a row end the part. */
const BROADCAST_TIMEOUT_MS = 10_000;
/** Devices writing at once, each waiting for its acknowledgement before its next push (BENCH_SCALE_WRITERS). */
const SUSTAINED_WRITERS = Number(process.env.BENCH_SCALE_WRITERS ?? 16);
const SUSTAINED_WARMUP_MS = 1000;
/** After the writers stop, how long deliveries may go on before what is missing counts as undelivered. */
const DRAIN_MS = 15_000;
const STORM_BATCH = 10;
/** Longest wait for every device to be back after a restart; past it the part reports what it has. */
const STORM_TIMEOUT_MS = 90_000;
const INSTANCE_WRITERS_EACH = 2;
const SETTLE_MS = 15_000;
/** The device processes' niceness, below the server's (and this process's) priority; BENCH_SCALE_DEVICE_NICE=0: the same. */
const DEVICE_NICENESS = Number(process.env.BENCH_SCALE_DEVICE_NICE ?? 10);
/** Longest wait for a fleet to connect, per 1000 devices. */
const GROW_MS_PER_1000 = 30_000;

const TARGETS = {
  broadcastMs: 1000,
  sustained: new Map([
    [1000, 500],
    [3000, 200],
  ]),
  deliveryP99Ms: 500,
  ackP99Ms: 20,
  stormMs: 10_000,
  stallMs: 200,
};

// ---------------------------------------------------------------- child processes

/** Every child this scenario started, killed on any way out (see killAll). */
const children = new Set<ChildProcess>();

/** BENCH_SCALE_CPU_PROF=dir: every server process writes a CPU profile there when it exits (not when killed). */
const PROFILE_DIR = process.env.BENCH_SCALE_CPU_PROF;
/** BENCH_SCALE_PARTS=storm,sustained: measure only these parts (broadcast, sustained, storm, instances); default all. */
const PARTS = process.env.BENCH_SCALE_PARTS?.split(',').map((part) => part.trim());
const wantPart = (part: string) => PARTS === undefined || PARTS.includes(part);

function forkChild(entry: string, args: string[], profile = false): ChildProcess {
  // The same loader flags (tsx) and tsconfig as this process; the children's stdout (the server's log) goes nowhere.
  const execArgv = profile && PROFILE_DIR ? [...process.execArgv, '--cpu-prof', '--cpu-prof-dir', PROFILE_DIR] : process.execArgv;
  const child = fork(fileURLToPath(new URL(entry, import.meta.url)), args, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], execArgv });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

function killAll(): void {
  for (const child of children) child.kill('SIGKILL');
}

/** PostgreSQL databases this scenario created and has not dropped yet. */
const databases = new Set<string>();

async function exited(child: ChildProcess, ask: () => void, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    ask();
  } catch {
    // The IPC channel is already closed: the kill below ends it.
  }
  try {
    await withTimeout(done, ms, 'a child process to exit');
  } catch {
    child.kill('SIGKILL');
    await done;
  }
}

type ServerStats = Extract<ScaleServerReport, { type: 'stats' }>;

class ServerProcess {
  private nextId = 0;
  private readonly pending = new Map<number, (stats: ServerStats) => void>();

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    /** When it listened, and when its process started, on the shared clock. */
    readonly listeningAt: number,
    readonly startedAt: number,
  ) {
    child.on('message', (report: ScaleServerReport) => {
      if (report.type !== 'stats') return;
      this.pending.get(report.id)?.(report);
      this.pending.delete(report.id);
    });
  }

  static async start(config: ScaleServerConfig): Promise<ServerProcess> {
    const child = forkChild('../lib/scale-server.ts', [JSON.stringify(config)], true);
    const ready = await readyReport<ScaleServerReport>(child, 'the scale server');
    return new ServerProcess(child, ready.port, ready.listeningAt, ready.startedAt);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  stats(reset = false): Promise<ServerStats> {
    const id = this.nextId++;
    const answer = new Promise<ServerStats>((resolve) => this.pending.set(id, resolve));
    this.child.send({ type: 'stats', id, reset } satisfies ScaleServerRequest);
    return withTimeout(answer, 30_000, 'the scale server to report');
  }

  /** SIGKILL, as a crash or an OOM kill ends a server: nothing closed, nothing flushed. */
  async kill(): Promise<void> {
    await exited(this.child, () => this.child.kill('SIGKILL'), 10_000);
  }

  stop(): Promise<void> {
    return exited(this.child, () => this.child.send({ type: 'exit' } satisfies ScaleServerRequest), 10_000);
  }
}

type Reply = Extract<ClientsReport, { type: 'reply' }>;
type Summary = Extract<ClientsReport, { type: 'summary' }>;
type Settled = Extract<ClientsReport, { type: 'settled' }>;
type CaughtUp = Extract<ClientsReport, { type: 'caught-up' }>;
/** A request as a caller gives it: without the id the process adds (distributed over the union). */
type Outgoing = ClientsRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

class ClientProcess {
  private nextId = 0;
  private readonly pending = new Map<number, (report: ClientsReport) => void>();
  onDelivered?: (seq: number, at: number) => void;
  onCaughtUp?: (report: CaughtUp) => void;
  devices = 0;

  constructor(readonly child: ChildProcess) {
    child.on('message', (report: ClientsReport) => {
      if (report.type === 'delivered') this.onDelivered?.(report.seq, report.at);
      else if (report.type === 'caught-up') this.onCaughtUp?.(report);
      else {
        this.pending.get(report.id)?.(report);
        this.pending.delete(report.id);
      }
    });
  }

  static start(name: string): ClientProcess {
    const child = forkChild('../lib/scale-clients.ts', [name]);
    // The devices stand in for other machines: what they spend (10,000 of them retrying a connection every
    // second while the server restarts, say) should not be taken from the server, on a machine of two cores.
    try {
      if (child.pid !== undefined && DEVICE_NICENESS !== 0) setPriority(child.pid, DEVICE_NICENESS);
    } catch {
      // Not allowed here: they run at the server's priority.
    }
    return new ClientProcess(child);
  }

  request<R extends ClientsReport>(message: Outgoing, ms = 30_000): Promise<R> {
    const id = this.nextId++;
    const answer = new Promise<R>((resolve) => this.pending.set(id, resolve as (report: ClientsReport) => void));
    this.child.send({ ...message, id } as ClientsRequest);
    return withTimeout(answer, ms, `devices (${message.type})`);
  }

  exit(): Promise<void> {
    return exited(this.child, () => this.child.send({ type: 'exit' } satisfies ClientsRequest), 5000);
  }
}

const addStats = (all: readonly ConnectStats[]): ConnectStats => {
  const total: ConnectStats = { attempts: 0, refused: 0, busy: 0, rejected: 0, timeouts: 0, closed: 0, drops: 0, requestErrors: {}, cpuMs: 0 };
  for (const stats of all) {
    for (const key of ['attempts', 'refused', 'busy', 'rejected', 'timeouts', 'closed', 'drops', 'cpuMs'] as const) total[key] += stats[key];
    for (const [code, count] of Object.entries(stats.requestErrors)) total.requestErrors[code] = (total.requestErrors[code] ?? 0) + count;
  }
  return total;
};

const mergeBins = (all: readonly [number, number][][]): Float64Array => {
  const bins = new Float64Array(HISTOGRAM_BINS);
  for (const pairs of all) for (const [bin, count] of pairs) bins[bin]! += count;
  return bins;
};

/** The devices, spread over a few processes. */
class Fleet {
  private readonly delivered = new Map<number, { reports: number; at: number }>();
  private deliveredWaiter?: { seq: number; resolve(at: number): void };
  private caughtUp: CaughtUp[] = [];
  private caughtUpWaiter?: () => void;

  constructor(private readonly processes: ClientProcess[]) {
    for (const process of processes) {
      process.onDelivered = (seq, at) => {
        const entry = this.delivered.get(seq) ?? { reports: 0, at: 0 };
        entry.reports++;
        entry.at = Math.max(entry.at, at);
        this.delivered.set(seq, entry);
        if (this.deliveredWaiter?.seq === seq && entry.reports === this.processes.length) this.deliveredWaiter.resolve(entry.at);
      };
      process.onCaughtUp = (report) => {
        this.caughtUp.push(report);
        if (this.caughtUp.length === this.processes.length) this.caughtUpWaiter?.();
      };
    }
  }

  static start(count: number): Fleet {
    return new Fleet(Array.from({ length: count }, (_, i) => ClientProcess.start(`p${i}`)));
  }

  get processCount(): number {
    return this.processes.length;
  }

  get size(): number {
    return this.processes.reduce((sum, process) => sum + process.devices, 0);
  }

  /** Adds devices until there are `total`, spread evenly; resolves once all are connected, subscribed and pulled. */
  async grow(urls: string[], total: number, checkpoint: number, mode: Mode): Promise<ConnectStats> {
    const share = (i: number) => Math.floor(total / this.processes.length) + (i < total % this.processes.length ? 1 : 0);
    const ms = GROW_MS_PER_1000 * Math.max(1, Math.ceil((total - this.size) / 1000));
    const replies = await Promise.all(
      this.processes.map(async (process, i) => {
        const count = share(i) - process.devices;
        const reply = await process.request<Reply>({ type: 'connect', urls, count: Math.max(0, count), checkpoint, mode }, ms);
        process.devices = reply.devices;
        if (reply.failures) throw new Error(`devices failed to connect: ${reply.failures.join('; ')}`);
        return reply.stats;
      }),
    );
    return addStats(replies);
  }

  private all<R extends ClientsReport>(message: Outgoing, ms?: number): Promise<R[]> {
    return Promise.all(this.processes.map((process) => process.request<R>(message, ms)));
  }

  async track(from: number, report: boolean): Promise<void> {
    this.delivered.clear();
    await this.all({ type: 'track', from, report });
  }

  /** Resolves with the time the last device got `seq`, or undefined after `ms`. */
  async waitDelivered(seq: number, ms: number): Promise<number | undefined> {
    const known = this.delivered.get(seq);
    if (known && known.reports === this.processes.length) return known.at;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await new Promise<number | undefined>((resolve) => {
        this.deliveredWaiter = { seq, resolve };
        timer = setTimeout(() => resolve(undefined), ms);
      });
    } finally {
      clearTimeout(timer);
      this.deliveredWaiter = undefined;
      this.delivered.delete(seq);
    }
  }

  /** Per tracked sequence, how many devices have it; the delivery histogram. */
  async summary(): Promise<{ from: number; counts: number[]; bins: Float64Array; deliveries: number; messages: number }> {
    const summaries = await this.all<Summary>({ type: 'summary' });
    const counts: number[] = [];
    for (const summary of summaries) summary.counts.forEach((count, i) => (counts[i] = (counts[i] ?? 0) + count));
    return { from: summaries[0]!.from, counts: Array.from(counts, (count) => count ?? 0), bins: mergeBins(summaries.map((s) => s.bins)), deliveries: summaries.reduce((sum, s) => sum + s.deliveries, 0), messages: summaries.reduce((sum, s) => sum + s.messages, 0) };
  }

  async freeze(checkpoint: number): Promise<void> {
    await this.all({ type: 'freeze', checkpoint });
  }

  async arm(expected: number): Promise<void> {
    this.caughtUp = [];
    await this.all({ type: 'arm', expected });
  }

  /** Resolves when every process's devices all caught up after a restart, or with what came after `ms`. */
  async waitCaughtUp(ms: number): Promise<CaughtUp[]> {
    if (this.caughtUp.length < this.processes.length) {
      await Promise.race([new Promise<void>((resolve) => (this.caughtUpWaiter = resolve)), sleep(ms)]);
      this.caughtUpWaiter = undefined;
    }
    return this.caughtUp;
  }

  async connectStats(): Promise<ConnectStats> {
    return addStats((await this.all<Reply>({ type: 'stats' })).map((reply) => reply.stats));
  }

  async settle(expected: number[], ms: number): Promise<{ exact: ExactStats; bins: Float64Array }> {
    const settled = await this.all<Settled>({ type: 'settle', expected, timeoutMs: ms }, ms + 30_000);
    const exact = settled[0]!.exact;
    for (const other of settled.slice(1)) for (const key of Object.keys(exact) as (keyof ExactStats)[]) exact[key] += other.exact[key];
    return { exact, bins: mergeBins(settled.map((s) => s.bins)) };
  }

  async drop(): Promise<void> {
    await this.all({ type: 'drop' });
    for (const process of this.processes) process.devices = 0;
  }

  exit(): Promise<void[]> {
    return Promise.all(this.processes.map((process) => process.exit()));
  }
}

// ---------------------------------------------------------------- writers

/** A device that writes: one connection, pushes of new documents whose data is the time they were sent. */
class Writer {
  private counter = 0;
  readonly errors = new Map<string, number>();

  private constructor(
    private readonly socket: LiteSocket,
    private readonly clientId: string,
  ) {}

  static async open(url: string, label: string): Promise<Writer> {
    const clientId = `writer-${label}-${randomUUID().slice(0, 8)}`;
    return new Writer(await LiteSocket.connect(url, { protocolVersion: PROTOCOL_VERSION, clientId, token: clientId }, CONNECT_TIMEOUT_MS), clientId);
  }

  /** Pushes `count` new documents; resolves with their sequences (none when refused) and the time to the answer. */
  async push(count: number): Promise<{ seqs: number[]; sentAt: number; ackMs: number; retryAfterMs?: number }> {
    const millis = Date.now();
    const sentAt = clock();
    const events: SyncEvent[] = Array.from({ length: count }, () => {
      const n = this.counter++;
      return { id: randomUUID(), collection: COLLECTION, documentId: `${this.clientId}-${n}`, op: 'insert', data: { t: sentAt }, baseEventId: null, hlc: formatHlc({ millis, counter: n, node: this.clientId }) };
    });
    const body = await this.socket.request('sync:push', JSON.stringify(toPushRows(events, this.clientId)));
    const ackMs = clock() - sentAt;
    const [reply] = JSON.parse(body) as [{ ok: boolean; results?: unknown[]; error?: { code: string; details?: { retryAfterMs?: number } } }];
    if (!reply.ok) {
      const code = reply.error?.code ?? 'unknown';
      this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
      const retryAfterMs = reply.error?.details?.retryAfterMs;
      return { seqs: [], sentAt, ackMs, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
    }
    const seqs: number[] = [];
    for (const result of reply.results ?? []) {
      if (typeof result === 'number') seqs.push(result);
      else this.errors.set('not stored', (this.errors.get('not stored') ?? 0) + 1);
    }
    return { seqs, sentAt, ackMs };
  }

  close(): void {
    this.socket.close();
  }
}

/** Every writer pushes one event per push, the next after the answer, until `ms` have passed. */
/**
 * Pushes from every writer for `ms`, each push after the answer to the last;
 * with `perSecond`, paced to that many pushes a second in all (each writer's
 * k-th push not before its k-th turn), else as fast as the answers come.
 */
async function write(writers: readonly Writer[], ms: number, perSecond?: number): Promise<{ seqs: number[]; ackMs: number[]; started: number; ended: number }> {
  const seqs: number[] = [];
  const ackMs: number[] = [];
  const started = clock();
  const end = started + ms;
  let ended = started;
  const every = perSecond === undefined ? 0 : (1000 * writers.length) / perSecond;
  await Promise.all(
    writers.map(async (writer, index) => {
      for (let turn = 0; clock() < end; turn++) {
        const due = started + (index / writers.length + turn) * every;
        if (due > clock()) await sleep(due - clock());
        if (clock() >= end) break;
        const result = await writer.push(1);
        ended = Math.max(ended, clock());
        if (result.seqs.length === 0) {
          await sleep(result.retryAfterMs ?? 10);
          continue;
        }
        seqs.push(...result.seqs);
        ackMs.push(result.ackMs);
      }
    }),
  );
  return { seqs, ackMs, started, ended };
}

const writerErrors = (writers: readonly Writer[]) => {
  const all = new Map<string, number>();
  for (const writer of writers) for (const [code, count] of writer.errors) all.set(code, (all.get(code) ?? 0) + count);
  return [...all].map(([code, count]) => `${code}×${count}`).join(' ');
};

// ---------------------------------------------------------------- PostgreSQL and Redis

const pgUrl = (database: string) => `postgres://${POSTGRES.user}@${POSTGRES.host}:${POSTGRES.port}/${database}`;

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: pgUrl('postgres') });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

// ---------------------------------------------------------------- the parts

interface Row {
  part: string;
  n: number;
  figures: string;
  targets: string;
}

const fixed = (value: number, digits = 0) => (Number.isFinite(value) ? value.toFixed(digits) : '—');
const verdict = (met: boolean) => (met ? 'met' : 'MISSED');
const kilo = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

interface Run {
  config: BenchConfig['scale'];
  record(measurement: Measurement): void;
  log(message: string): void;
  rows: Row[];
  fleet: Fleet;
  server: ServerProcess;
  sqlitePath: string;
}

function figure(run: Run, metric: string, unit: Measurement['unit'], value: number, n: number, note: string, storage = 'sqlite'): void {
  if (!Number.isFinite(value)) return;
  run.record({ scenario: 'scale', system: 'offline-sync', metric, unit, value, runs: [value], n, storage, note });
}

async function broadcastPart(run: Run, n: number): Promise<void> {
  const writer = await Writer.open(run.server.url, `broadcast${n}`);
  try {
    const latest = (await run.server.stats()).latestSeq;
    await run.fleet.track(latest + 1, true);
    await run.server.stats(true);
    const times: number[] = [];
    const acks: number[] = [];
    let lost = 0;
    let lostInRow = 0;
    for (let i = 0; i < BROADCAST_WARMUP + run.config.broadcasts && lostInRow < 3; i++) {
      const { seqs, sentAt, ackMs } = await writer.push(1);
      if (seqs.length === 0) throw new Error(`a broadcast push was refused: ${writerErrors([writer])}`);
      const at = await run.fleet.waitDelivered(seqs[0]!, BROADCAST_TIMEOUT_MS);
      if (at === undefined) {
        lost++;
        lostInRow++;
        continue;
      }
      lostInRow = 0;
      if (i >= BROADCAST_WARMUP) {
        times.push(at - sentAt);
        acks.push(ackMs);
      }
    }
    const server = await run.server.stats();
    const within = times.filter((ms) => ms <= TARGETS.broadcastMs).length;
    const [p50, p99, max] = [percentile(times, 50), percentile(times, 99), Math.max(...times)];
    const target = n >= 10_000 ? `target ≤ ${TARGETS.broadcastMs} ms, ${run.config.broadcasts} of ${run.config.broadcasts}: ${verdict(within === run.config.broadcasts && lost === 0)}` : 'no target at this size';
    const note = `${within} of ${times.length} within 1 s${lost > 0 ? `, ${lost} not at every subscriber within ${BROADCAST_TIMEOUT_MS / 1000} s` : ''}; writer ack p50 ${fixed(percentile(acks, 50), 1)} ms; server loop max ${fixed(server.loopMaxMs)} ms, RSS ${fixed(server.rssMb)} MB; ${target}`;
    figure(run, `broadcast-${n}-p50`, 'ms', p50, n, note);
    figure(run, `broadcast-${n}-p99`, 'ms', p99, n, note);
    figure(run, `broadcast-${n}-max`, 'ms', max, n, note);
    run.rows.push({ part: 'broadcast', n, figures: `time to all p50 ${fixed(p50, 1)} ms, p99 ${fixed(p99, 1)}, max ${fixed(max, 1)}; ${within}/${times.length} within 1 s; loop max ${fixed(server.loopMaxMs)} ms; RSS ${fixed(server.rssMb)} MB`, targets: n >= 10_000 ? verdict(within === run.config.broadcasts && lost === 0) : '—' });
    run.log(`scale broadcast ${kilo(n)}: p50 ${fixed(p50, 1)} ms, p99 ${fixed(p99, 1)} ms, max ${fixed(max, 1)} ms, ${within}/${times.length} within 1 s`);
  } finally {
    writer.close();
  }
}

/**
 * Sustained writes, twice: as fast as the writers' answers come (the most
 * the server and the devices carry), then paced at the target's rate (what
 * the target asks: that rate delivered within the delivery bound).
 */
async function sustainedPart(run: Run, n: number): Promise<void> {
  const writers = await Promise.all(Array.from({ length: SUSTAINED_WRITERS }, (_, i) => Writer.open(run.server.url, `sustained${n}-${i}`)));
  try {
    await write(writers, SUSTAINED_WARMUP_MS);
    await sustainedRun(run, n, writers);
    const wanted = TARGETS.sustained.get(n);
    // 5 % above the target, so that the pushes a window's edges cut off do not put the rate under it.
    if (wanted !== undefined) await sustainedRun(run, n, writers, Math.ceil(wanted * 1.05));
  } finally {
    for (const writer of writers) writer.close();
  }
}

async function sustainedRun(run: Run, n: number, writers: readonly Writer[], paced?: number): Promise<void> {
  {
    await sleep(500);
    const latest = (await run.server.stats()).latestSeq;
    await run.fleet.track(latest + 1, false);
    await run.server.stats(true);
    const devicesBefore = await run.fleet.connectStats();
    const written = await write(writers, run.config.sustainedMs, paced);
    const devicesCpuMs = (await run.fleet.connectStats()).cpuMs - devicesBefore.cpuMs;
    const windowS = (written.ended - written.started) / 1000;
    const acked = new Set(written.seqs);
    const atAll = (summary: { from: number; counts: number[] }) => [...acked].filter((seq) => summary.counts[seq - summary.from] === n).length;
    const deadline = clock() + DRAIN_MS;
    let summary = await run.fleet.summary();
    while (atAll(summary) < acked.size && clock() < deadline) {
      await sleep(250);
      summary = await run.fleet.summary();
    }
    const drained = (clock() - written.ended) / 1000;
    const server = await run.server.stats();
    const delivered = atAll(summary);
    const rate = delivered / windowS;
    const deliveryP50 = histogramPercentile(summary.bins, 50);
    const deliveryP99 = histogramPercentile(summary.bins, 99);
    const ackP50 = percentile(written.ackMs, 50);
    const ackP99 = percentile(written.ackMs, 99);
    const wanted = TARGETS.sustained.get(n);
    const met = {
      rate: wanted === undefined || (rate >= wanted && deliveryP99 <= TARGETS.deliveryP99Ms),
      ack: ackP99 <= TARGETS.ackP99Ms,
    };
    const errors = writerErrors(writers);
    const perMessage = summary.deliveries / summary.messages;
    const devicesCpu = `device processes' CPU ${fixed((100 * devicesCpuMs) / (written.ended - written.started))} % of a core`;
    const mode = paced === undefined ? '' : `-paced`;
    const note =
      `${SUSTAINED_WRITERS} writers, one event per push${paced === undefined ? ', as fast as acks come' : `, paced to ${paced}/s in all`}, ${fixed(windowS, 1)} s: ${acked.size} acked, ${delivered} at every subscriber` +
      `${delivered < acked.size ? ` (${acked.size - delivered} not within ${DRAIN_MS / 1000} s)` : ''}, drained ${fixed(drained, 1)} s after the last ack; ` +
      `delivery p50 ${fixed(deliveryP50, 1)} ms; ack p50 ${fixed(ackP50, 1)} ms; ${fixed(perMessage, 1)} events per live message; server CPU ${fixed((100 * server.cpuMs) / server.wallMs)} %, loop max ${fixed(server.loopMaxMs)} ms; ${devicesCpu}${errors ? `; writer errors ${errors}` : ''}; ` +
      `targets: ${wanted !== undefined ? `≥ ${wanted}/s with delivery p99 ≤ ${TARGETS.deliveryP99Ms} ms ${verdict(met.rate)}, ` : ''}ack p99 ≤ ${TARGETS.ackP99Ms} ms ${verdict(met.ack)}`;
    figure(run, `sustained${mode}-${n}-rate`, 'docs/s', rate, n, note);
    figure(run, `sustained${mode}-${n}-delivery-p99`, 'ms', deliveryP99, n, note);
    figure(run, `sustained${mode}-${n}-ack-p99`, 'ms', ackP99, n, note);
    run.rows.push({
      part: paced === undefined ? 'sustained' : `paced ${paced}/s`,
      n,
      figures: `${fixed(rate)} writes/s to all (${acked.size} acked in ${fixed(windowS, 1)} s, ${delivered} at all); delivery p50 ${fixed(deliveryP50, 1)} ms, p99 ${fixed(deliveryP99, 1)} ms; ack p50 ${fixed(ackP50, 1)} ms, p99 ${fixed(ackP99, 1)} ms; ${fixed(perMessage, 1)} events/message; server CPU ${fixed((100 * server.cpuMs) / server.wallMs)} %, loop max ${fixed(server.loopMaxMs)} ms; ${devicesCpu}${errors ? `; errors ${errors}` : ''}`,
      targets: `${wanted !== undefined ? `rate+delivery ${verdict(met.rate)}, ` : ''}ack ${verdict(met.ack)}`,
    });
    run.log(`scale sustained ${kilo(n)}${paced === undefined ? '' : ` paced ${paced}/s`}: ${fixed(rate)} writes/s at all, delivery p99 ${fixed(deliveryP99, 1)} ms, ack p99 ${fixed(ackP99, 1)} ms`);
  }
}

/** Resolves false when not every device was back in time: the devices then no longer make a whole fleet. */
async function stormPart(run: Run, n: number): Promise<boolean> {
  const checkpoint = (await run.server.stats()).latestSeq;
  await run.fleet.freeze(checkpoint);
  const writer = await Writer.open(run.server.url, `storm${n}`);
  let expected = checkpoint;
  try {
    for (let written = 0; written < run.config.stormWrites; written += STORM_BATCH) {
      const { seqs } = await writer.push(Math.min(STORM_BATCH, run.config.stormWrites - written));
      expected = Math.max(expected, ...seqs);
    }
  } finally {
    writer.close();
  }
  await run.fleet.arm(expected);
  const armedAt = clock();
  const port = run.server.port;
  const killedAt = clock();
  await run.server.kill();
  run.server = await ServerProcess.start({ storage: 'sqlite', path: run.sqlitePath, port });
  const restartMs = run.server.listeningAt - killedAt;
  const reports = await run.fleet.waitCaughtUp(STORM_TIMEOUT_MS);
  const server = await run.server.stats();
  const times = reports.flatMap((report) => report.times);
  const back = times.length;
  const short = reports.reduce((sum, report) => sum + report.short, 0);
  // Processes that have not reported: their devices are counted as not back, their attempts asked for now.
  const stats = reports.length === run.fleet.processCount ? addStats(reports.map((report) => report.stats)) : await run.fleet.connectStats();
  const since = times.map((at) => at - run.server.listeningAt);
  const all = back === n ? Math.max(...since) : Number.NaN;
  const met = { time: back === n && all <= TARGETS.stormMs, stall: server.loopMaxMs <= TARGETS.stallMs, timeouts: stats.timeouts === 0 };
  const requestErrors = Object.entries(stats.requestErrors).map(([code, count]) => `${code}×${count}`).join(' ');
  const note =
    `${n} devices, ${expected - checkpoint} events after their checkpoint; restart (SIGKILL to listening) ${fixed(restartMs)} ms; ` +
    `${back} of ${n} caught up${back < n ? ` within ${STORM_TIMEOUT_MS / 1000} s` : ''}, p50 ${fixed(percentile(since, 50))} ms${short > 0 ? `, ${short} short of the acked events` : ''}; ` +
    `attempts ${stats.attempts}: refused (not listening) ${stats.refused}, SERVER_BUSY ${stats.busy}, other refusals ${stats.rejected}, connect timeouts ${stats.timeouts}${stats.closed ? `, closed ${stats.closed}` : ''}${requestErrors ? `; request errors ${requestErrors}` : ''}; ` +
    `device processes' CPU ${fixed(stats.cpuMs / 1000, 1)} s in ${fixed(((back === n ? Math.max(...times) : clock()) - armedAt) / 1000, 1)} s; ` +
    `server loop max ${fixed(server.loopMaxMs)} ms, p99 ${fixed(server.loopP99Ms, 1)} ms, CPU ${fixed((100 * server.cpuMs) / server.wallMs)} %, RSS ${fixed(server.rssMb)} MB; ` +
    `targets${n >= 10_000 ? '' : ' (stated for 10k)'}: all back ≤ ${TARGETS.stormMs / 1000} s ${verdict(met.time)}, no stall > ${TARGETS.stallMs} ms ${verdict(met.stall)}, 0 timeouts ${verdict(met.timeouts)}`;
  figure(run, `storm-${n}-caught-up`, 'ms', all, n, note);
  figure(run, `storm-${n}-caught-up-p50`, 'ms', percentile(since, 50), n, note);
  figure(run, `storm-${n}-loop-max`, 'ms', server.loopMaxMs, n, note);
  run.rows.push({
    part: 'storm',
    n,
    figures: `all caught up ${back === n ? `${fixed(all)} ms` : `— (${back}/${n})`} after listening (p50 ${fixed(percentile(since, 50))} ms); restart ${fixed(restartMs)} ms; loop max ${fixed(server.loopMaxMs)} ms; timeouts ${stats.timeouts}, SERVER_BUSY ${stats.busy}, refused ${stats.refused}, attempts ${stats.attempts}${requestErrors ? `; request errors ${requestErrors}` : ''}`,
    targets: `time ${verdict(met.time)}, stall ${verdict(met.stall)}, timeouts ${verdict(met.timeouts)}${n >= 10_000 ? '' : ' (10k targets)'}`,
  });
  run.log(`scale storm ${kilo(n)}: ${back}/${n} caught up, last ${fixed(all)} ms after listening; loop max ${fixed(server.loopMaxMs)} ms; timeouts ${stats.timeouts}, busy ${stats.busy}`);
  if (server.stalls.length > 0) {
    run.log(`scale storm ${kilo(n)}: longest stalls ${server.stalls.map(([at, ms, processMs]) => `${fixed(ms)} ms from +${fixed((at - run.server.listeningAt) / 1000, 2)} s after listening (${fixed(processMs / 1000, 2)} s into the process)`).join(', ')}`);
  }
  return back === n;
}

async function instancesPart(run: Run, m: number): Promise<void> {
  if (!(await portOpen(POSTGRES.host, POSTGRES.port)) || !(await portOpen(REDIS.host, REDIS.port))) {
    run.log(`note: skipping the scale scenario's two-instance part: PostgreSQL (${POSTGRES.port}) or Redis (${REDIS.port}) is not reachable on 127.0.0.1`);
    return;
  }
  const database = `rxos_bench_scale_${randomBytes(5).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${database}`);
  databases.add(database);
  const servers: ServerProcess[] = [];
  const writers: Writer[] = [];
  try {
    const config = { storage: 'postgres', connectionString: pgUrl(database), redisUrl: REDIS.url, redisKey: `rxos-bench-${randomBytes(6).toString('hex')}`, port: 0 } as const;
    // Started together, as instances of a fresh deployment: both create the schema at once.
    servers.push(...(await Promise.all([ServerProcess.start(config), ServerProcess.start(config)])));
    const urls = servers.map((server) => server.url);
    await run.fleet.drop();
    await run.fleet.grow(urls, m, 0, 'exact');
    for (const url of urls) for (let i = 0; i < INSTANCE_WRITERS_EACH; i++) writers.push(await Writer.open(url, `instances-${writers.length}`));
    const written = await write(writers, run.config.instanceMs);
    const windowS = (written.ended - written.started) / 1000;
    const { exact, bins } = await run.fleet.settle(written.seqs, SETTLE_MS);
    const loops = await Promise.all(servers.map((server) => server.stats()));
    const deliveryP99 = histogramPercentile(bins, 99);
    const rate = written.seqs.length / windowS;
    const met = exact.duplicates === 0;
    const note =
      `2 instances (PostgreSQL, Redis adapter), ${m} subscribers split across them, ${writers.length} writers (${INSTANCE_WRITERS_EACH} per instance), ${written.seqs.length} acked in ${fixed(windowS, 1)} s (${fixed(rate)}/s); ` +
      `duplicates ${exact.duplicates} (live after a pull had brought them ${exact.liveDuplicates}; pulled after arriving live while the pull was on its way ${exact.pullDuplicatesInFlight}, pulled though held when the pull was sent ${exact.pullDuplicatesHeld}); live events out of sequence order ${exact.outOfOrder} on ${exact.devicesOutOfOrder} subscribers; ` +
      `gap pulls ${exact.gapPulls} bringing ${exact.pulledEvents} events; behind after ${SETTLE_MS / 1000} s ${exact.behind}, missing ${exact.missing}; delivery p50 ${fixed(histogramPercentile(bins, 50), 1)} ms; ` +
      `ack p99 ${fixed(percentile(written.ackMs, 99), 1)} ms; loop max ${loops.map((s) => fixed(s.loopMaxMs)).join(' / ')} ms${writerErrors(writers) ? `; writer errors ${writerErrors(writers)}` : ''}; target 0 duplicates: ${verdict(met)}`;
    figure(run, `instances-${m}-rate`, 'docs/s', rate, m, note, 'postgres');
    figure(run, `instances-${m}-delivery-p99`, 'ms', deliveryP99, m, note, 'postgres');
    run.rows.push({
      part: 'instances',
      n: m,
      figures: `${written.seqs.length} writes (${fixed(rate)}/s); duplicates ${exact.duplicates} (live ${exact.liveDuplicates}, pulled in flight ${exact.pullDuplicatesInFlight}, pulled held ${exact.pullDuplicatesHeld}); out of order ${exact.outOfOrder} (${exact.devicesOutOfOrder} subscribers); gap pulls ${exact.gapPulls} (${exact.pulledEvents} events); behind ${exact.behind}, missing ${exact.missing}; delivery p99 ${fixed(deliveryP99, 1)} ms`,
      targets: `duplicates ${verdict(met)}${exact.behind + exact.missing > 0 ? ', LOST' : ''}`,
    });
    run.log(`scale instances ${m}: duplicates ${exact.duplicates}, out of order ${exact.outOfOrder}, behind ${exact.behind}, missing ${exact.missing}`);
  } finally {
    for (const writer of writers) writer.close();
    await run.fleet.drop().catch(() => undefined);
    await Promise.all(servers.map((server) => server.stop()));
    await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).then(
      () => databases.delete(database),
      (error: unknown) => run.log(`note: could not drop ${database}: ${String(error)}`),
    );
  }
}

function table(rows: readonly Row[]): string[] {
  const header = ['part', 'devices', 'figures', 'targets'];
  const lines = rows.map((row) => [row.part, kilo(row.n), row.figures, row.targets]);
  const all = [header, ...lines];
  const widths = header.map((_, i) => Math.max(...all.map((line) => line[i]!.length)));
  return all.map((line) => line.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}

export const scale: Scenario = {
  name: 'scale',
  async run({ config, systems, record, log }) {
    if (withoutThisProject({ systems, log }, 'scale')) return;
    const scaleConfig = config.scale;
    const directory = mkdtempSync(join(tmpdir(), 'rxos-scale-'));
    // A process that ends another way than through the finally below takes its children and files along: an uncaught
    // error (exit), or Ctrl-C and kill (the children also leave on their own when this process is gone).
    const onExit = () => {
      killAll();
      rmSync(directory, { recursive: true, force: true });
    };
    const onSignal = (signal: NodeJS.Signals) => {
      onExit();
      const drops = [...databases].map((database) => adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => undefined));
      void Promise.race([Promise.all(drops), sleep(3000)]).finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
    };
    process.once('exit', onExit);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const rows: Row[] = [];
    const failures: string[] = [];
    let run: Run | undefined;
    try {
      const sqlitePath = join(directory, 'sync.db');
      const server = await ServerProcess.start({ storage: 'sqlite', path: sqlitePath, port: 0 });
      const fleet = Fleet.start(scaleConfig.clientProcesses);
      run = { config: scaleConfig, record, log, rows, fleet, server, sqlitePath };
      log(
        `scale: server limits raised for 10k devices (maxHandshakesPerSecond ${SCALE_SERVER_OPTIONS.maxHandshakesPerSecond}, rateLimit ${SCALE_SERVER_OPTIONS.rateLimit.max}/s per connection and user, loginLimit ${SCALE_SERVER_OPTIONS.loginLimit.perAddress} per address); ${scaleConfig.clientProcesses} device processes`,
      );
      const sized = [
        ...(wantPart('broadcast') ? scaleConfig.broadcastSizes : []),
        ...(wantPart('sustained') ? scaleConfig.sustainedSizes : []),
        ...(wantPart('storm') ? scaleConfig.stormSizes : []),
      ];
      const sizes = [...new Set(sized)].sort((a, b) => a - b);
      for (const n of sizes) {
        const growing = clock();
        const latest = (await run.server.stats(true)).latestSeq;
        const stats = await run.fleet.grow([run.server.url], n, latest, 'count');
        const server = await run.server.stats();
        log(
          `scale: ${kilo(n)} devices connected (${fixed((clock() - growing) / 1000, 1)} s; ${stats.attempts} attempts, SERVER_BUSY ${stats.busy}, timeouts ${stats.timeouts}; ` +
            `server CPU ${fixed((100 * server.cpuMs) / server.wallMs)} %, loop max ${fixed(server.loopMaxMs)} ms, RSS ${fixed(server.rssMb)} MB; device processes' CPU ${fixed(stats.cpuMs / 1000, 1)} s)`,
        );
        const parts: [boolean, string, () => Promise<boolean | void>][] = [
          [wantPart('broadcast') && scaleConfig.broadcastSizes.includes(n), 'broadcast', () => broadcastPart(run!, n)],
          [wantPart('sustained') && scaleConfig.sustainedSizes.includes(n), 'sustained', () => sustainedPart(run!, n)],
          // Last at its size: it restarts the server.
          [wantPart('storm') && scaleConfig.stormSizes.includes(n), 'storm', () => stormPart(run!, n)],
        ];
        let whole = true;
        for (const [wanted, part, measure] of parts) {
          if (!wanted) continue;
          try {
            whole = (await measure()) !== false;
          } catch (error) {
            failures.push(`${part} ${kilo(n)}: ${error instanceof Error ? error.message : String(error)}`);
            log(`scale ${part} ${kilo(n)} failed: ${error instanceof Error ? error.stack : String(error)}`);
            // After a failed restart there may be no server: the bigger sizes would measure that.
            if (part === 'storm') whole = false;
          }
        }
        if (!whole) {
          log(`scale: not every device is back after the restart; the sizes above ${kilo(n)} are skipped`);
          break;
        }
      }
      await run.server.stop();
      if (wantPart('instances') && scaleConfig.instanceSubscribers > 0) {
        try {
          await instancesPart(run, scaleConfig.instanceSubscribers);
        } catch (error) {
          failures.push(`instances: ${error instanceof Error ? error.message : String(error)}`);
          log(`scale instances failed: ${error instanceof Error ? error.stack : String(error)}`);
        }
      }
    } finally {
      await run?.fleet.exit().catch(() => undefined);
      await run?.server.stop().catch(() => undefined);
      onExit();
      process.off('exit', onExit);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      for (const line of table(rows)) log(line);
    }
    if (failures.length > 0) throw new Error(`scale: ${failures.length} part(s) failed: ${failures.join(' | ')}`);
  },
};
