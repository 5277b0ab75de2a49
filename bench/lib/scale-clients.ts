/**
 * One process of the scale scenario's devices (scenarios/scale.ts forks a
 * few): thousands of lightweight protocol clients (lib/scale-socket.ts) that
 * connect as the plugin does (handshake with a token, subscribe, pull from
 * their checkpoint), answer pings and reconnect as the plugin's transport
 * does after a drop: after 500–1000 ms (its jittered backoff with the
 * default retry options), never before a SERVER_BUSY refusal's retryAfterMs.
 *
 * What they do with live messages depends on the mode the parent sets:
 * - `count`: each event's arrival is counted per sequence (from a given
 *   one), its delivery time (arrival minus the time its writer sent it,
 *   carried in the document) goes into a histogram, and the parent is told
 *   when every device of this process has a sequence (`delivered`);
 * - `frozen`: live messages are ignored and the checkpoint stays where it
 *   was set, for a catch-up pull after the server's restart;
 * - `exact`: as the plugin's engine (onLive, moveCheckpointsThroughHeld):
 *   live events are held, the checkpoint moves through the held ones, and a
 *   gap is pulled LIVE_PULL_DELAY after the last live message that left it open,
 *   with `have` naming what is held; every sequence received twice, live or
 *   pulled, is counted, and every live event that arrives after a higher one.
 */
import { PROTOCOL_VERSION, toSpans } from 'rxdb-offline-sync/protocol';
import { COLLECTION, CONNECT_TIMEOUT_MS, ConnectFailure, HISTOGRAM_BINS, LiteSocket, clock, histogramBin, pullTail, scanLive, sparseBins } from './scale-socket.js';

/** The plugin's LIVE_PULL_DELAY: how long a gap waits for live messages, growing when a pull brought what then came live. */
const LIVE_PULL_DELAY = { least: 500, most: 5000, grow: 2, shrink: 0.99 } as const;
/** The plugin's pullBatchSize. */
const PULL_LIMIT = 2000;
/** The plugin's MAX_RETRY_AFTER_MS. */
const MAX_RETRY_AFTER_MS = 60_000;
/** Handshakes one process has under way at once while growing the fleet. */
const CONNECT_CONCURRENCY = 64;

export type Mode = 'count' | 'frozen' | 'exact';

export interface ConnectStats {
  attempts: number;
  refused: number;
  busy: number;
  rejected: number;
  timeouts: number;
  closed: number;
  /** Connections the server ended (or that broke) while in use. */
  drops: number;
  /** Requests (subscribe, pull) answered with an error, by code. */
  requestErrors: Record<string, number>;
  /** CPU time of the device process(es) since these counts started, in ms. */
  cpuMs: number;
}

export interface ExactStats {
  liveEvents: number;
  pulledEvents: number;
  gapPulls: number;
  duplicates: number;
  /** Live events a pull had already brought (the relay from the other instance was slower than the gap pull). */
  liveDuplicates: number;
  /** Pulled events that had arrived live while the pull was on its way (after its `have` was made). */
  pullDuplicatesInFlight: number;
  /** Pulled events that had arrived live before the pull was sent: `have` should have left them out. */
  pullDuplicatesHeld: number;
  outOfOrder: number;
  /** Devices that saw at least one live event out of order. */
  devicesOutOfOrder: number;
  /** Devices whose checkpoint is short of the expected sequence. */
  behind: number;
  /** Expected sequences a device never received, summed over devices. */
  missing: number;
}

export type ClientsRequest =
  | { type: 'connect'; id: number; urls: string[]; count: number; checkpoint: number; mode: Mode }
  | { type: 'track'; id: number; from: number; report: boolean }
  | { type: 'summary'; id: number }
  | { type: 'freeze'; id: number; checkpoint: number }
  | { type: 'arm'; id: number; expected: number }
  | { type: 'settle'; id: number; expected: number[]; timeoutMs: number }
  | { type: 'stats'; id: number }
  | { type: 'drop'; id: number }
  | { type: 'exit' };

export type ClientsReport =
  | { type: 'reply'; id: number; devices: number; stats: ConnectStats; failures?: string[] }
  | { type: 'summary'; id: number; devices: number; from: number; counts: number[]; bins: [number, number][]; deliveries: number; messages: number }
  | { type: 'settled'; id: number; devices: number; exact: ExactStats; bins: [number, number][] }
  | { type: 'delivered'; seq: number; at: number }
  | { type: 'caught-up'; times: number[]; short: number; stats: ConnectStats };

class Device {
  socket?: LiteSocket;
  checkpoint = 0;
  wanted = true;
  /** The storm's mark: set when this device, connected again, finished its catch-up. */
  caughtUpAt?: number;
  // The plugin's engine state (exact mode); when each sequence was received.
  received = new Map<number, number>();
  held = new Set<number>();
  highestLive = 0;
  outOfOrder = false;
  gapTimer?: ReturnType<typeof setTimeout>;
  pullDelay: number = LIVE_PULL_DELAY.least;
  pulling = false;
  pullAgain = false;

  constructor(
    readonly clientId: string,
    readonly url: string,
  ) {}
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
/** The plugin's backoffDelay with its default retry options (retryDelay 1000, maxDelay 1000): 500–1000 ms. */
const backoff = () => 500 + Math.random() * 500;

const name = process.argv[2] ?? 'p0';
const send = (report: ClientsReport) => process.send?.(report);
let devices: Device[] = [];
let mode: Mode = 'count';
let cpuSince = process.cpuUsage();
let stats = freshStats();
// Count mode.
let trackFrom = Number.POSITIVE_INFINITY;
let reportDelivered = false;
let counts: number[] = [];
let lastArrival: number[] = [];
let bins = new Float64Array(HISTOGRAM_BINS);
let deliveries = 0;
/** Live messages received that held a tracked sequence (count mode): deliveries ÷ messages is the fan-out's batch size. */
let messages = 0;
// The storm.
let armed: { expected: number; remaining: number; short: number } | undefined;
// Exact mode.
let exact = freshExact();

function freshStats(): ConnectStats {
  cpuSince = process.cpuUsage();
  return { attempts: 0, refused: 0, busy: 0, rejected: 0, timeouts: 0, closed: 0, drops: 0, requestErrors: {}, cpuMs: 0 };
}

/** The counts as they stand, with the CPU time spent since they started. */
function snapshot(): ConnectStats {
  const cpu = process.cpuUsage(cpuSince);
  return { ...stats, cpuMs: (cpu.user + cpu.system) / 1000 };
}

function freshExact(): ExactStats {
  return { liveEvents: 0, pulledEvents: 0, gapPulls: 0, duplicates: 0, liveDuplicates: 0, pullDuplicatesInFlight: 0, pullDuplicatesHeld: 0, outOfOrder: 0, devicesOutOfOrder: 0, behind: 0, missing: 0 };
}

function requestError(code: string): void {
  stats.requestErrors[code] = (stats.requestErrors[code] ?? 0) + 1;
}

/** Connects `device` as the plugin's transport does, retrying until it is connected (or no longer wanted). */
async function connect(device: Device): Promise<void> {
  while (device.wanted) {
    stats.attempts++;
    let socket: LiteSocket;
    try {
      socket = await LiteSocket.connect(device.url, { protocolVersion: PROTOCOL_VERSION, clientId: device.clientId, token: device.clientId }, CONNECT_TIMEOUT_MS);
    } catch (error) {
      const failure = error instanceof ConnectFailure ? error : new ConnectFailure('closed', String(error));
      if (failure.kind === 'refused') stats.refused++;
      else if (failure.kind === 'busy') stats.busy++;
      else if (failure.kind === 'rejected') stats.rejected++;
      else if (failure.kind === 'timeout') stats.timeouts++;
      else stats.closed++;
      const notBefore = failure.retryAfterMs !== undefined && failure.retryAfterMs > 0 ? Math.min(failure.retryAfterMs, MAX_RETRY_AFTER_MS) : 0;
      await sleep(Math.max(notBefore, backoff()));
      continue;
    }
    if (!device.wanted) {
      socket.close();
      return;
    }
    device.socket = socket;
    socket.onLive = (frame, at) => onLive(device, frame, at);
    socket.onClose = () => {
      clearTimeout(device.gapTimer);
      device.pulling = false;
      if (device.socket === socket) device.socket = undefined;
      if (!device.wanted) return;
      stats.drops++;
      void sleep(backoff()).then(() => connect(device));
    };
    // As the plugin does on connect: subscribe, and pull from the checkpoint at once (not waiting for the subscription's answer).
    const subscribed = socket.request('sync:subscribe', JSON.stringify({ collections: [COLLECTION] })).then(
      (body) => {
        if (!body.startsWith('[{"ok":true')) requestError(/"code":"([A-Z_]+)"/.exec(body)?.[1] ?? 'unknown');
      },
      () => {},
    );
    const pulled = catchUp(device, socket);
    await Promise.all([subscribed, pulled]);
    return;
  }
}

/** Pulls from the device's checkpoint until the server has no more; marks the storm's catch-up. */
async function catchUp(device: Device, socket: LiteSocket): Promise<void> {
  for (;;) {
    const have = mode === 'exact' && device.held.size > 0 ? toSpans(device.held) : undefined;
    const sentAt = clock();
    let body: string;
    try {
      body = await socket.request('sync:pull', JSON.stringify({ checkpoint: device.checkpoint, collections: [COLLECTION], limit: PULL_LIMIT, ...(have ? { have } : {}) }));
    } catch {
      return; // Closed: the reconnection pulls again.
    }
    const tail = pullTail(body);
    if (!tail.ok) {
      requestError(tail.error?.code ?? 'unknown');
      await sleep(Math.max(tail.error?.details?.retryAfterMs ?? 0, backoff()));
      if (socket.closed) return;
      continue;
    }
    if (mode === 'exact') takePulled(device, body, sentAt);
    if (tail.checkpoint > device.checkpoint) device.checkpoint = tail.checkpoint;
    if (!tail.hasMore) break;
  }
  if (mode === 'exact') {
    advance(device);
    if (device.checkpoint < device.highestLive) armGapPull(device);
  }
  if (armed && device.caughtUpAt === undefined) {
    device.caughtUpAt = clock();
    if (device.checkpoint < armed.expected) armed.short++;
    if (--armed.remaining === 0) {
      send({ type: 'caught-up', times: devices.map((d) => d.caughtUpAt!), short: armed.short, stats: snapshot() });
      armed = undefined;
    }
  }
}

function onLive(device: Device, frame: string, at: number): void {
  if (mode === 'frozen') return;
  if (mode === 'exact') {
    onLiveExact(device, frame);
    return;
  }
  let tracked = false;
  scanLive(frame, (seq, sentAt) => {
    if (seq > device.checkpoint) device.checkpoint = seq;
    if (seq < trackFrom) return;
    tracked = true;
    const i = seq - trackFrom;
    const count = (counts[i] ?? 0) + 1;
    counts[i] = count;
    if (!(at <= (lastArrival[i] ?? 0))) lastArrival[i] = at;
    if (Number.isFinite(sentAt)) {
      bins[histogramBin(at - sentAt)]!++;
      deliveries++;
    }
    if (reportDelivered && count === devices.length) send({ type: 'delivered', seq, at: lastArrival[i]! });
  });
  if (tracked) messages++;
}

/** The plugin's onLive: hold, move the checkpoint through what is held, pull a gap 100 ms after the last live message. */
function onLiveExact(device: Device, frame: string): void {
  const at = clock();
  scanLive(frame, (seq, sentAt) => {
    exact.liveEvents++;
    if (device.received.has(seq)) {
      exact.duplicates++;
      exact.liveDuplicates++;
    }
    if (seq <= device.checkpoint) device.pullDelay = Math.min(LIVE_PULL_DELAY.most, device.pullDelay * LIVE_PULL_DELAY.grow);
    if (!device.received.has(seq)) {
      device.received.set(seq, at);
      if (Number.isFinite(sentAt)) {
        bins[histogramBin(at - sentAt)]!++;
        deliveries++;
      }
    }
    if (seq < device.highestLive) {
      exact.outOfOrder++;
      device.outOfOrder = true;
    } else {
      device.highestLive = seq;
    }
    if (seq > device.checkpoint) device.held.add(seq);
  });
  advance(device);
  clearTimeout(device.gapTimer);
  if (device.checkpoint < device.highestLive) armGapPull(device);
  else device.pullDelay = Math.max(LIVE_PULL_DELAY.least, device.pullDelay * LIVE_PULL_DELAY.shrink);
}

function armGapPull(device: Device): void {
  clearTimeout(device.gapTimer);
  device.gapTimer = setTimeout(() => void gapPull(device), device.pullDelay);
}

/** The plugin's moveCheckpointsThroughHeld. */
function advance(device: Device): void {
  while (device.held.has(device.checkpoint + 1)) device.held.delete(++device.checkpoint);
  for (const seq of device.held) if (seq <= device.checkpoint) device.held.delete(seq);
}

async function gapPull(device: Device): Promise<void> {
  const socket = device.socket;
  if (!socket || socket.closed) return;
  if (device.pulling) {
    device.pullAgain = true;
    return;
  }
  device.pulling = true;
  exact.gapPulls++;
  try {
    await catchUp(device, socket);
  } finally {
    device.pulling = false;
  }
  if (device.pullAgain) {
    device.pullAgain = false;
    armGapPull(device);
  }
}

/** The events of a pull reply (protocol 4 rows: the sequence is the eighth field), counted against what the device holds. */
function takePulled(device: Device, body: string, sentAt: number): void {
  const [reply] = JSON.parse(body) as [{ events: unknown[][] }];
  const at = clock();
  for (const row of reply.events) {
    const seq = row[7] as number;
    exact.pulledEvents++;
    const received = device.received.get(seq);
    if (received !== undefined) {
      exact.duplicates++;
      // As the plugin does: an event that came live while the pull was on its way makes the next gap wait longer.
      device.pullDelay = Math.min(LIVE_PULL_DELAY.most, device.pullDelay * LIVE_PULL_DELAY.grow);
      if (received >= sentAt) exact.pullDuplicatesInFlight++;
      else exact.pullDuplicatesHeld++;
    } else {
      device.received.set(seq, at);
    }
    device.held.delete(seq);
  }
}

async function grow(urls: string[], count: number, checkpoint: number): Promise<string[]> {
  const start = devices.length;
  const added = Array.from({ length: count }, (_, i) => {
    const device = new Device(`${name}-d${start + i}`, urls[(start + i) % urls.length]!);
    device.checkpoint = checkpoint;
    return device;
  });
  devices.push(...added);
  const failures: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < added.length) {
      const device = added[next++]!;
      await connect(device).catch((error: unknown) => void failures.push(String(error)));
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, added.length) }, worker));
  return failures;
}

async function settle(expected: readonly number[], timeoutMs: number): Promise<void> {
  const last = expected.length > 0 ? Math.max(...expected) : 0;
  const deadline = clock() + timeoutMs;
  while (clock() < deadline && devices.some((device) => device.checkpoint < last || device.pulling)) await sleep(50);
  exact.behind = devices.filter((device) => device.checkpoint < last).length;
  exact.missing = 0;
  for (const device of devices) for (const seq of expected) if (!device.received.has(seq)) exact.missing++;
  exact.devicesOutOfOrder = devices.filter((device) => device.outOfOrder).length;
}

function closeAll(): void {
  for (const device of devices) {
    device.wanted = false;
    clearTimeout(device.gapTimer);
    device.socket?.close();
  }
}

process.on('message', (request: ClientsRequest) => {
  const reply = (extra: { failures?: string[] } = {}) => send({ type: 'reply', id: (request as { id: number }).id, devices: devices.length, stats: snapshot(), ...extra });
  switch (request.type) {
    case 'connect':
      mode = request.mode;
      stats = freshStats();
      void grow(request.urls, request.count, request.checkpoint).then((failures) => reply(failures.length > 0 ? { failures: failures.slice(0, 5) } : {}));
      return;
    case 'track':
      mode = 'count';
      trackFrom = request.from;
      reportDelivered = request.report;
      counts = [];
      lastArrival = [];
      bins = new Float64Array(HISTOGRAM_BINS);
      deliveries = 0;
      messages = 0;
      reply();
      return;
    case 'summary':
      send({ type: 'summary', id: request.id, devices: devices.length, from: trackFrom, counts: Array.from(counts, (count) => count ?? 0), bins: sparseBins(bins), deliveries, messages });
      return;
    case 'freeze':
      mode = 'frozen';
      for (const device of devices) device.checkpoint = request.checkpoint;
      reply();
      return;
    case 'arm':
      stats = freshStats();
      for (const device of devices) delete device.caughtUpAt;
      armed = { expected: request.expected, remaining: devices.length, short: 0 };
      reply();
      return;
    case 'settle':
      void settle(request.expected, request.timeoutMs).then(() => send({ type: 'settled', id: request.id, devices: devices.length, exact, bins: sparseBins(bins) }));
      return;
    case 'stats':
      reply();
      return;
    case 'drop':
      closeAll();
      devices = [];
      stats = freshStats();
      exact = freshExact();
      bins = new Float64Array(HISTOGRAM_BINS);
      deliveries = 0;
      trackFrom = Number.POSITIVE_INFINITY;
      armed = undefined;
      mode = 'count';
      reply();
      return;
    case 'exit':
      closeAll();
      setTimeout(() => process.exit(0), 50);
      return;
  }
});
// The parent is gone (it failed, or was killed): so are these devices.
process.on('disconnect', () => {
  closeAll();
  process.exit(0);
});
