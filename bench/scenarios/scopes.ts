/**
 * Sync scopes (issue 26), this project only, its server on SQLite (a temp
 * file). One server holds 1,000,000 assets spread over crews, one crew 5 %
 * of them (50,000); another holds those 50,000 alone.
 *
 * - `initial-scoped`: a fresh client with the scope `{ crewId: 'c7' }`
 *   syncs from the big server until it holds its 50,000; `initial-alone`:
 *   a fresh client with no scope syncs the server that holds only them.
 *   Target: scoped ≤ 1.2× alone. Runs alternate (see alternating()), after
 *   one unmeasured round; before each, a write to a collection no client
 *   syncs moves the server's latest sequence (no run is answered from pages
 *   kept for an earlier reader).
 * - Scope changes on a client that holds its scope: `add-1k` (50k → 51k,
 *   the scope widened by a crew of 1,000), `add-5k` (50k → 55k), and
 *   `add-1k-small` (the same 1,000 added to a scope of 5,000); each is
 *   undone between runs (`narrow-*`, documents leave without being sent).
 *   Target: cost in proportion to the documents that move, not the scope.
 *   The client's own database is measured alone (`floor-*`: the same
 *   documents bulk-inserted, no sync, into a collection holding as many;
 *   RxDB's memory storage inserts into sorted arrays, and over the
 *   tombstones a narrowing leaves, at a cost that grows with the
 *   collection): the same 1,000 into the 10× larger scope within 1.5× as
 *   many times its floor, and the 5,000 within 2× of their floor plus what
 *   as many documents cost sync in `initial-alone` (less `floor-initial`).
 *
 * Documents sent are counted from the server's `pull` events (documents in
 * pull replies; no other client writes, so nothing arrives live), bytes on
 * the server's TCP sockets (both ways, socket.io framing included), and
 * each step checks the client's count. Seeding goes straight through the
 * storage's saveEvents, 25,000 events a call (one transaction each), before
 * the server starts (and indexes the scope field). BENCH_SCOPES_N sets the
 * collection's size (--quick: 100,000); BENCH_SCOPES_DB a directory where
 * the seeded files stay for the next run of the same size.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ScopeSelector } from 'rxdb-offline-sync';
import { SqliteSyncStorage } from 'rxdb-offline-sync/server';
import { profiled } from '../lib/profile.js';
import { gc, withTimeout } from '../lib/runtime.js';
import { alternating, withoutThisProject, type Measurement, type Scenario } from '../lib/scenario.js';
import { dropDatabase } from '../lib/database.js';
import { CREW, crewAssets, makeLayout, openAssetDatabase, seedAssets, touch, type Asset } from '../lib/scopes-data.js';
import { changeScope, difference, startAssetSync, startScopesServer, type AssetClient, type ScopesServer, type Sent } from '../lib/scopes-server.js';
import { median } from '../lib/stats.js';

const TARGET_RATIO = 1.2;
/** How far from proportional a scope change's cost may be: the same move into a 10× larger scope at most this many times as long, each over its floor. */
const PROPORTIONAL_SLACK = 1.5;
/** How many times its floor and what its documents cost sync in the initial sync alone a scope change may take. */
const MOVE_SLACK = 2;
/** The most the scoped initial syncs take together before no more runs are started. */
const SCOPED_BUDGET_MS = 30_000;
const mb = (bytes: number) => bytes / 1024 / 1024;
const kilo = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : String(n));

interface Step {
  ms: number;
  sent: Sent;
}

/** Runs `task` and returns its time and what the server sent meanwhile. */
async function measured(server: ScopesServer, name: string, timeoutMs: number, task: () => Promise<unknown>): Promise<Step> {
  gc();
  const before = server.sent();
  const started = performance.now();
  await profiled(name, () => withTimeout(task(), timeoutMs, name));
  const ms = performance.now() - started;
  return { ms, sent: difference(server.sent(), before) };
}

async function expectCount(client: AssetClient, expected: number, what: string): Promise<void> {
  const count = await client.count();
  if (count !== expected) throw new Error(`scopes: the client holds ${count} assets after ${what}, expected ${expected}`);
}

interface Summary {
  ms: number;
  documents: number;
  pulls: number;
  bytesOut: number;
  pullMs: number;
  maxPullMs: number;
}

/**
 * The client's own database, with no sync: the time to bulk-insert `held`
 * into an empty collection (`fill`), and `moved` into it once it holds
 * `held`, in each of `runs` (removed again after each, as a narrowing
 * removes them). RxDB's memory storage keeps each index as a sorted array
 * and inserts with a splice, at a cost that grows with the collection: a
 * move into a 50,000-document scope costs more there than into one of 5,000
 * whatever sync does. The proportion targets compare what sync adds to it.
 */
async function localFloor(held: readonly Asset[], moved: readonly Asset[], runs: number): Promise<{ fill: number; moves: number[] }> {
  const db = await openAssetDatabase();
  try {
    const timed = async (task: () => Promise<unknown>) => {
      gc();
      const started = performance.now();
      await task();
      // A count applies what the storage holds back: the sync's figures end with one too.
      await db.assets.count().exec();
      return performance.now() - started;
    };
    const fill = await timed(() => db.assets.bulkInsert([...held]));
    const moves: number[] = [];
    for (let run = 0; run < runs; run++) {
      moves.push(await timed(() => db.assets.bulkInsert([...moved])));
      await db.assets.bulkRemove(moved.map((asset) => asset.id));
      await db.assets.count().exec();
    }
    return { fill, moves };
  } finally {
    await dropDatabase(db);
  }
}

/** One figure of steps: the median time, and the medians of what was sent, in the note. */
function summarizeSteps(steps: readonly Step[]): Summary {
  return {
    ms: median(steps.map((s) => s.ms)),
    documents: median(steps.map((s) => s.sent.documents)),
    pulls: median(steps.map((s) => s.sent.pulls)),
    bytesOut: median(steps.map((s) => s.sent.bytesOut)),
    pullMs: median(steps.map((s) => s.sent.pullMs)),
    maxPullMs: Math.max(...steps.map((s) => s.sent.maxPullMs)),
  };
}

const sentNote = (s: Summary) =>
  `${s.documents} documents sent in ${s.pulls} pull replies, ${mb(s.bytesOut).toFixed(2)} MB from the server; pull handlers ${s.pullMs.toFixed(0)} ms, the longest ${s.maxPullMs.toFixed(0)} ms`;

export const scopes: Scenario = {
  name: 'scopes',
  async run({ config, systems, record, log }) {
    if (withoutThisProject({ systems, log }, 'scopes')) return;
    // --quick is told by its shorter step timeout.
    const total = Number(process.env.BENCH_SCOPES_N ?? (config.timeoutMs < 180_000 ? 100_000 : 1_000_000));
    const layout = makeLayout(total);
    const inScope = layout.counts[CREW.scope]!;
    const small = layout.counts[CREW.small]!;
    const add1k = layout.counts[CREW.add1k]!;
    const add5k = layout.counts[CREW.add5k]!;
    const base = { scenario: 'scopes', system: 'offline-sync', storage: 'sqlite' } as const;
    const figure = (metric: string, unit: Measurement['unit'], runs: number[], n: number, note?: string) =>
      record({ ...base, metric, unit, value: median(runs), runs, n, ...(note ? { note } : {}) });
    const table: string[][] = [['figure', 'median', 'sent (median)', 'note']];

    // BENCH_SCOPES_DB=<dir>: the seeded files are kept there and used again by the next run of the same size.
    const keepDir = process.env.BENCH_SCOPES_DB;
    const directory = keepDir ?? mkdtempSync(join(tmpdir(), 'rxos-scopes-'));
    if (keepDir) mkdirSync(keepDir, { recursive: true });
    const paths = { full: join(directory, `full-${total}.db`), alone: join(directory, `alone-${total}.db`), seeded: join(directory, `seeded-${total}`) };
    // Only files whose seeding finished: anything else is seeded afresh.
    const reuse = keepDir !== undefined && existsSync(paths.seeded);
    if (!reuse) for (const path of [paths.full, paths.alone]) for (const suffix of ['', '-wal', '-shm']) rmSync(`${path}${suffix}`, { force: true });
    const full = new SqliteSyncStorage({ path: paths.full });
    const alone = new SqliteSyncStorage({ path: paths.alone });
    const servers: ScopesServer[] = [];
    const clients: AssetClient[] = [];
    try {
      await full.init();
      await alone.init();
      if (!reuse) log(`scopes: seeding ${total} assets (${inScope} in crew ${CREW.scope}) into SQLite`);
      if (reuse) log(`scopes: using the seeded files in ${directory}`);
      const seedMs = reuse ? Number.NaN : await seedAssets(layout, full, alone, (asset) => asset.crewId === CREW.scope);
      if (keepDir && !reuse) writeFileSync(paths.seeded, `${seedMs}\n`);
      if (!reuse) figure('seed', 'ms', [seedMs], total, `saveEvents, 25k events a call; ${Math.round((total / seedMs) * 1000)} events/s (the ${inScope} of the small server written alongside)`);
      const started = performance.now();
      const big = await startScopesServer(full);
      const indexMs = performance.now() - started;
      servers.push(big);
      const only = await startScopesServer(alone);
      servers.push(only);
      figure('index', 'ms', [indexMs], total, 'server start: indexScopeFields over the seeded heads');
      log(`scopes: ${reuse ? 'seeded before' : `seeded in ${(seedMs / 1000).toFixed(1)} s`}, scope field indexed in ${indexMs.toFixed(0)} ms`);

      // A (`scoped`): the scope from the big server; B (`alone`): the same documents alone, no scope; and, to
      // tell the scoped path's own cost from that of the other documents, the scope from the small server
      // (`scoped-alone`). One unmeasured round first, without A: its time is the server's (SQL), which
      // needs no warming, and the other two warm the client's code. A's runs stop once they took
      // SCOPED_BUDGET_MS together (at least one).
      const scope: ScopeSelector = { crewId: CREW.scope };
      const sides = [
        { id: 'scoped', server: big, storage: full, scope: scope as ScopeSelector | null, steps: [] as Step[] },
        { id: 'alone', server: only, storage: alone, scope: null, steps: [] as Step[] },
        { id: 'scoped-alone', server: only, storage: alone, scope: scope as ScopeSelector | null, steps: [] as Step[] },
      ];
      let kept: AssetClient | undefined;
      let scopedMs = 0;
      for (const { system: side, run } of alternating(sides, config.runs + 1)) {
        if (side.id === 'scoped' && (run === 0 || scopedMs >= SCOPED_BUDGET_MS)) continue;
        const db = await openAssetDatabase();
        await touch(side.storage);
        let client: AssetClient | undefined;
        const step = await measured(side.server, `scopes-initial-${side.id}-run${run}`, config.timeoutMs, async () => {
          client = await startAssetSync(db, side.server.url, side.scope);
        });
        clients.push(client!);
        await expectCount(client!, inScope, `the initial sync (${side.id})`);
        if (run > 0) side.steps.push(step);
        log(`scopes initial-${side.id} run ${run}${run === 0 ? ' (warm-up)' : ''}: ${step.ms.toFixed(0)} ms, ${step.sent.documents} documents in ${step.sent.pulls} pulls (handlers ${step.sent.pullMs.toFixed(0)} ms, longest ${step.sent.maxPullMs.toFixed(0)} ms), ${mb(step.sent.bytesOut).toFixed(1)} MB`);
        // The last scoped client stays for the scope changes.
        if (side.id === 'scoped') {
          scopedMs += step.ms;
          if (kept) await kept.close();
          kept = client;
        } else await client!.close();
      }
      const [a, b, c] = sides.map((side) => summarizeSteps(side.steps)) as [Summary, Summary, Summary];
      const ratio = a.ms / b.ms;
      const verdict = `target ≤ ${TARGET_RATIO}×: ${ratio <= TARGET_RATIO ? 'met' : 'MISSED'}`;
      const runsNote = sides[0]!.steps.length < config.runs ? `; ${sides[0]!.steps.length} run(s), the budget of ${SCOPED_BUDGET_MS / 1000} s spent` : '';
      figure('initial-scoped', 'ms', sides[0]!.steps.map((s) => s.ms), inScope, `a ${kilo(inScope)} scope of ${kilo(total)}; ${sentNote(a)}; scoped ÷ alone ${ratio.toFixed(2)}× (${verdict})${runsNote}`);
      figure('initial-alone', 'ms', sides[1]!.steps.map((s) => s.ms), inScope, `the ${kilo(inScope)} alone on the server, no scope; ${sentNote(b)}`);
      figure('initial-scoped-alone', 'ms', sides[2]!.steps.map((s) => s.ms), inScope, `the same scope, from the server holding the ${kilo(inScope)} alone; ${sentNote(c)}`);
      for (const [side, name] of [[sides[0]!, 'scoped'], [sides[1]!, 'alone']] as const) {
        figure(`initial-${name}-rate`, 'docs/s', side.steps.map((s) => (inScope / s.ms) * 1000), inScope);
        figure(`initial-${name}-wire`, 'MB', side.steps.map((s) => mb(s.sent.bytesOut)), inScope, 'bytes the server wrote to its sockets during the sync');
      }
      const row = (label: string, x: Summary) => [label, `${x.ms.toFixed(0)} ms`, `${x.documents} docs, ${mb(x.bytesOut).toFixed(1)} MB`, `${Math.round((inScope / x.ms) * 1000)} docs/s; pull handlers ${x.pullMs.toFixed(0)} ms, longest ${x.maxPullMs.toFixed(0)} ms`];
      table.push(row(`initial sync, ${kilo(inScope)} scope of ${kilo(total)}`, a));
      table.push(row(`initial sync, the ${kilo(inScope)} alone`, b));
      table.push(row(`initial sync, the same scope of the ${kilo(inScope)} alone`, c));
      table.push(['scoped ÷ alone', `${ratio.toFixed(2)}×`, '', verdict]);

      // Scope changes: each widening undone before the next run, so every run moves the same documents. No
      // unmeasured round: the initial syncs ran the client's code that applies pages and removes documents.
      const smallDb = await openAssetDatabase();
      const smallClient = await withTimeout(startAssetSync(smallDb, big.url, { crewId: CREW.small }), config.timeoutMs, 'the small scope');
      clients.push(smallClient);
      await expectCount(smallClient, small, 'the initial sync of the small scope');
      const changes = [
        { metric: 'add-1k', client: kept!, from: CREW.scope, add: CREW.add1k, held: inScope, moved: add1k },
        { metric: 'add-5k', client: kept!, from: CREW.scope, add: CREW.add5k, held: inScope, moved: add5k },
        { metric: 'add-1k-small', client: smallClient, from: CREW.small, add: CREW.add1k, held: small, moved: add1k },
      ];
      const results = changes.map(() => ({ widen: [] as Step[], narrow: [] as Step[] }));
      for (let run = 1; run <= config.runs; run++) {
        for (const [i, change] of changes.entries()) {
          const widen = await measured(big, `scopes-${change.metric}-run${run}`, config.timeoutMs, async () => {
            await changeScope(change.client, { crewId: { $in: [change.from, change.add] } });
            await change.client.count();
          });
          await expectCount(change.client, change.held + change.moved, `${change.metric}`);
          if (widen.sent.documents !== change.moved) log(`scopes ${change.metric}: the server sent ${widen.sent.documents} documents for ${change.moved} that moved in`);
          const narrow = await measured(big, `scopes-narrow-${change.metric}-run${run}`, config.timeoutMs, async () => {
            await changeScope(change.client, { crewId: change.from });
            await change.client.count();
          });
          await expectCount(change.client, change.held, `narrowing back from ${change.metric}`);
          results[i]!.widen.push(widen);
          results[i]!.narrow.push(narrow);
          log(
            `scopes ${change.metric} run ${run}: ${widen.ms.toFixed(0)} ms, ${widen.sent.documents} documents, ` +
              `${mb(widen.sent.bytesOut).toFixed(2)} MB; back: ${narrow.ms.toFixed(0)} ms, ${narrow.sent.documents} documents`,
          );
        }
      }
      for (const [i, change] of changes.entries()) {
        const widen = summarizeSteps(results[i]!.widen);
        const narrow = summarizeSteps(results[i]!.narrow);
        const label = `${kilo(change.held)} → ${kilo(change.held + change.moved)}`;
        figure(change.metric, 'ms', results[i]!.widen.map((s) => s.ms), change.moved, `scope ${label}; ${sentNote(widen)}`);
        figure(`narrow-${change.metric}`, 'ms', results[i]!.narrow.map((s) => s.ms), change.moved, `scope ${kilo(change.held + change.moved)} → ${kilo(change.held)}; ${sentNote(narrow)}`);
        table.push([`scope change ${label}`, `${widen.ms.toFixed(0)} ms`, `${widen.documents} docs, ${mb(widen.bytesOut).toFixed(2)} MB`, `pull handlers ${widen.pullMs.toFixed(0)} ms`]);
        table.push([`scope change ${kilo(change.held + change.moved)} → ${kilo(change.held)}`, `${narrow.ms.toFixed(0)} ms`, `${narrow.documents} docs, ${mb(narrow.bytesOut).toFixed(2)} MB`, 'documents leave']);
      }
      // The client database's own share (see localFloor): the same documents, no sync, into as many.
      const held = { [CREW.scope]: crewAssets(layout, CREW.scope), [CREW.small]: crewAssets(layout, CREW.small) };
      const floors = [];
      for (const change of changes) {
        const floor = await localFloor(held[change.from]!, crewAssets(layout, change.add), config.runs);
        figure(`floor-${change.metric}`, 'ms', floor.moves, change.moved, `the ${kilo(change.moved)} bulk-inserted, no sync, into a memory-storage collection of ${kilo(change.held)}`);
        table.push([`floor: ${kilo(change.moved)} inserted into ${kilo(change.held)}, no sync`, `${median(floor.moves).toFixed(0)} ms`, '', 'RxDB memory storage alone']);
        floors.push(floor);
      }
      const fill = median(floors.filter((_, i) => changes[i]!.from === CREW.scope).map((floor) => floor.fill));
      figure('floor-initial', 'ms', [fill], inScope, `the ${kilo(inScope)} bulk-inserted, no sync, into an empty collection`);
      table.push([`floor: ${kilo(inScope)} inserted into none, no sync`, `${fill.toFixed(0)} ms`, '', 'RxDB memory storage alone']);

      // In proportion to what moves, the local database's own cost (the floors) counted as it is: the same
      // move into a scope 10× larger costs about as many times its floor, and a move costs about its floor
      // plus what as many documents cost sync in the initial sync of the scope alone (less that one's floor).
      // Ratios, not differences: the floors are as noisy as the moves, and a difference of two came out below 0.
      const [one, five, oneSmall] = results.map((result) => median(result.widen.map((step) => step.ms))) as [number, number, number];
      const [floorOne, floorFive, floorOneSmall] = floors.map((floor) => median(floor.moves)) as [number, number, number];
      const perDocument = Math.max(0, b.ms - fill) / inScope;
      const bySize = one / floorOne / (oneSmall / floorOneSmall);
      const excess = (ms: number, floor: number, moved: number) => ms / (floor + moved * perDocument);
      const proportional = bySize <= PROPORTIONAL_SLACK && excess(five, floorFive, add5k) <= MOVE_SLACK;
      const proportionNote =
        `${kilo(add1k)} added to ${kilo(inScope)} ÷ to ${kilo(small)}, each over its floor: ${bySize.toFixed(2)}× (≤ ${PROPORTIONAL_SLACK}×; ${(one / oneSmall).toFixed(2)}× as measured); ` +
        `${kilo(add5k)} added: ${excess(five, floorFive, add5k).toFixed(2)}× and ${kilo(add1k)} added: ${excess(one, floorOne, add1k).toFixed(2)}× its floor and what as many documents cost sync in the initial sync alone ` +
        `(${(perDocument * 1000).toFixed(0)} µs each; ${kilo(add5k)}: ≤ ${MOVE_SLACK}×): ${proportional ? 'met' : 'MISSED'}`;
      log(`scopes: ${proportionNote}`);
      record({ ...base, metric: 'add-per-document', unit: 'ms', value: five / add5k, runs: results[1]!.widen.map((step) => step.ms / add5k), n: add5k, note: proportionNote });
      table.push(['scope change, by scope size, over floors', `${bySize.toFixed(2)}×`, '', `${kilo(add1k)} added to ${kilo(inScope)} ÷ to ${kilo(small)}, each ÷ its floor (≤ ${PROPORTIONAL_SLACK}×: ${bySize <= PROPORTIONAL_SLACK ? 'met' : 'MISSED'}); as measured: ${(one / oneSmall).toFixed(2)}×`]);
      table.push(['scope change, by documents moved', `${excess(five, floorFive, add5k).toFixed(2)}×`, '', `${kilo(add5k)} added ÷ (its floor + ${kilo(add5k)} × initial-alone's sync per document) (≤ ${MOVE_SLACK}×: ${excess(five, floorFive, add5k) <= MOVE_SLACK ? 'met' : 'MISSED'}); ${kilo(add1k)}: ${excess(one, floorOne, add1k).toFixed(2)}×`]);
      const widths = table[0]!.map((_, i) => Math.max(...table.map((line) => line[i]!.length)));
      for (const line of table) log(line.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
    } finally {
      await Promise.all(clients.map((client) => client.close().catch(() => undefined)));
      await Promise.all(servers.map((server) => server.stop()));
      await full.close();
      await alone.close();
      if (!keepDir) rmSync(directory, { recursive: true, force: true });
    }
  },
};
