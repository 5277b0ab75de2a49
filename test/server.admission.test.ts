import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { TurnQueue, UpgradeGate } from '../src/server/admission.js';
import { waitFor } from './helpers.js';

/** A turn budget the test opens and closes. */
const budget = (open: boolean) => ({ open, mayStart() { return this.open; } });

/** Asks for an upgrade over a raw socket and resolves with whatever the server answered before it closed. */
function rawUpgrade(port: number, path: string): { answer: Promise<string>; received: () => string } {
  let text = '';
  const socket = connect(port, '127.0.0.1', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`));
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (text += chunk));
  const answer = new Promise<string>((resolve, reject) => {
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
  return { answer, received: () => text };
}

describe('TurnQueue', () => {
  it('serves in arrival order, only while the turn has budget, and expires what waited too long', async () => {
    const turn = budget(false);
    const served: number[] = [];
    const expired: number[] = [];
    const queue = new TurnQueue<number>(turn, 60_000, 100, (n) => served.push(n), (n) => expired.push(n));
    for (let n = 0; n < 5; n++) queue.offer(n);
    expect(served).toEqual([]);
    expect(queue.length).toBe(5);
    turn.open = true;
    await waitFor(() => served.length === 5);
    expect(served).toEqual([0, 1, 2, 3, 4]);
    // While some wait, a new one queues behind them even in a turn with budget.
    turn.open = false;
    queue.offer(5);
    turn.open = true;
    queue.offer(6);
    await waitFor(() => served.length === 7);
    expect(served.slice(5)).toEqual([5, 6]);
    expect(expired).toEqual([]);

    const short = new TurnQueue<number>(budget(false), 30, 100, (n) => served.push(n), (n) => expired.push(n));
    short.offer(7);
    short.offer(8);
    await waitFor(() => expired.length === 2);
    expect(expired).toEqual([7, 8]);
    expect(short.stats).toEqual({ deferred: 2, expired: 2 });
  });

  it('tells what waited too long when to come back: after what waits now, at the rate served, spread', async () => {
    let now = 0;
    // A budget that lets `allow` more items start, whatever the turn.
    const turn = { allow: 0, mayStart: () => turn.allow-- > 0 };
    const served: number[] = [];
    const refused: [number, number][] = [];
    const queue = new TurnQueue<number>(turn, 3000, 100, (n) => served.push(n), (n, comeBackMs) => refused.push([n, comeBackMs]), () => false, () => now);
    for (let n = 0; n < 10; n++) queue.offer(n);
    // Five served at 0 ms, five a second later: 5 a second.
    turn.allow = 5;
    await waitFor(() => served.length === 5);
    now = 1000;
    turn.allow = 5;
    await waitFor(() => served.length === 10);
    // Twenty wait from 1 s; at 4 s, still unserved, they are refused: the last one (none left waiting) comes back
    // within the time the refused take at 5 a second, the first after the 19 behind it would have been served.
    for (let n = 10; n < 30; n++) queue.offer(n);
    now = 4000;
    await waitFor(() => refused.length === 20);
    expect(refused.map(([n]) => n)).toEqual(Array.from({ length: 20 }, (_, i) => 10 + i));
    const [first, last] = [refused[0]![1], refused[19]![1]];
    expect(first).toBeGreaterThanOrEqual((19 / 5) * 1000);
    expect(last).toBeLessThanOrEqual((20 / 5) * 1000 + 500);
    expect(new Set(refused.map(([, ms]) => ms)).size).toBeGreaterThan(1);
  });

  it('serves at most perTurn items in one turn, the rest in the turns after', async () => {
    const served: number[] = [];
    const queue = new TurnQueue<number>(budget(true), 60_000, 2, (n) => served.push(n), () => {});
    for (let n = 0; n < 5; n++) queue.offer(n);
    expect(served).toEqual([0, 1]);
    await new Promise((resolve) => setImmediate(resolve));
    await waitFor(() => served.length === 5);
    expect(served).toEqual([0, 1, 2, 3, 4]);
  });

  it('on close, serves or expires what waits, and serves later offers at once', () => {
    const served: string[] = [];
    const expired: string[] = [];
    const queue = new TurnQueue<string>(budget(false), 60_000, 100, (s) => served.push(s), (s) => expired.push(s), (s) => s === 'gone');
    queue.offer('a');
    queue.offer('gone');
    queue.close('expire');
    expect(expired).toEqual(['a']);
    queue.offer('b');
    expect(served).toEqual(['b']);
  });
});

describe('UpgradeGate', () => {
  let server: Server | undefined;
  let gate: UpgradeGate | undefined;
  afterEach(async () => {
    gate?.close();
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve) ?? resolve(undefined));
    server = gate = undefined;
  });

  /** An HTTP server whose gated upgrade listener answers 101 at once, and an ungated one of the app's own for /app. */
  async function gated(turn: { mayStart(): boolean }, maxWaitMs: number): Promise<number> {
    server = createServer((_request, response) => response.end('hello'));
    server.on('upgrade', (request: IncomingMessage, socket: Duplex) => {
      if (request.url === '/app') socket.end('HTTP/1.1 101 Switching Protocols\r\nX-Who: app\r\n\r\n');
    });
    gate = new UpgradeGate(turn, maxWaitMs, 100);
    gate.wrap(server, () =>
      server!.on('upgrade', (request: IncomingMessage, socket: Duplex) => {
        if (request.url !== '/app') socket.end('HTTP/1.1 101 Switching Protocols\r\nX-Who: gated\r\n\r\n');
      }),
    );
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    return (server.address() as AddressInfo).port;
  }

  it('starts an upgrade only in a turn with budget, and leaves the app upgrades of its own alone', async () => {
    const turn = budget(false);
    const port = await gated(turn, 60_000);
    const upgrade = rawUpgrade(port, '/socket.io/');
    await waitFor(() => gate!.stats.deferred === 1);
    await new Promise((resolve) => setImmediate(resolve));
    expect(upgrade.received()).toBe('');
    expect(await rawUpgrade(port, '/app').answer).toContain('X-Who: app');
    turn.open = true;
    expect(await upgrade.answer).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\nX-Who: gated/);
  });

  it('answers 503 with Retry-After to an upgrade that waited too long, and starts the next one', async () => {
    const turn = budget(false);
    const port = await gated(turn, 50);
    const answer = await rawUpgrade(port, '/socket.io/').answer;
    expect(answer).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(answer).toContain('Retry-After: 1\r\n');
    expect(gate!.stats.expired).toBe(1);
    turn.open = true;
    expect(await rawUpgrade(port, '/socket.io/').answer).toContain('X-Who: gated');
  });

  it('gives the server its listeners back on close', async () => {
    const port = await gated(budget(false), 60_000);
    gate!.close();
    expect(await rawUpgrade(port, '/socket.io/').answer).toContain('X-Who: gated');
  });
});
