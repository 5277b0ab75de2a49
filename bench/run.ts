/**
 * `npm run bench`: every scenario, this project and RxDB's replication-websocket
 * one after the other, in one process on loopback. Prints one JSON line per
 * figure, then a summary table; writes bench/out/results.json and
 * bench/out/chart.svg (and bench/chart.svg, the README's copy, after a full run).
 */
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { createInterface } from 'node:readline';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { renderChart } from './lib/chart.js';
import { enableProfiling } from './lib/profile.js';
import { gc } from './lib/runtime.js';
import type { BenchConfig, Measurement, Scenario, ScenarioContext } from './lib/scenario.js';
import { summarize, summaryTable } from './lib/summary.js';
import { abuse } from './scenarios/abuse.js';
import { attachments } from './scenarios/attachments.js';
import { bulkInsertFloor } from './scenarios/bulk-insert-floor.js';
import { fanOut } from './scenarios/fan-out.js';
import { initialSync } from './scenarios/initial-sync.js';
import { liveLatency } from './scenarios/live-latency.js';
import { outage } from './scenarios/outage.js';
import { push } from './scenarios/push.js';
import { scale } from './scenarios/scale.js';
import { scopes } from './scenarios/scopes.js';
import { slowLink } from './scenarios/slow-link.js';
import { throughput } from './scenarios/throughput.js';
import { wire } from './scenarios/wire.js';
import { offlineSync, offlineSyncOptions } from './systems/offline-sync.js';
import { rxdbOptions, rxdbWebsocket } from './systems/rxdb-websocket.js';

const SCENARIOS: readonly Scenario[] = [bulkInsertFloor, initialSync, wire, slowLink, push, liveLatency, fanOut, throughput, abuse, outage, scale, scopes, attachments];
const SYSTEMS = [offlineSync, rxdbWebsocket];

const FULL: BenchConfig = {
  sizes: [10_000, 50_000, 100_000],
  pushCount: 10_000,
  latencyWrites: 300,
  fanoutReaders: 12,
  fanoutWrites: 100,
  fanoutBurst: 1000,
  throughputClients: 10,
  throughputDocs: 2000,
  slowLink: { n: 10_000, rttMs: 100, mbitPerSecond: 20 },
  attachments: { bytes: 10 * 1024 * 1024, rssBytes: 200 * 1024 * 1024 },
  scale: {
    broadcastSizes: [1000, 3000, 10_000],
    broadcasts: 30,
    sustainedSizes: [1000, 3000],
    sustainedMs: 5000,
    stormSizes: [2000, 10_000],
    stormWrites: 50,
    instanceSubscribers: 500,
    instanceMs: 5000,
    clientProcesses: 3,
  },
  runs: 3,
  shortRuns: 9,
  timeoutMs: 180_000,
};

const QUICK: BenchConfig = {
  ...FULL,
  sizes: [2000, 10_000],
  pushCount: 2000,
  latencyWrites: 100,
  fanoutWrites: 20,
  fanoutBurst: 200,
  throughputDocs: 200,
  slowLink: { n: 2000, rttMs: 100, mbitPerSecond: 20 },
  attachments: { bytes: 2 * 1024 * 1024, rssBytes: 40 * 1024 * 1024 },
  scale: { ...FULL.scale, broadcastSizes: [1000, 3000], stormSizes: [2000], sustainedMs: 3000, instanceSubscribers: 200, instanceMs: 3000 },
  runs: 1,
  shortRuns: 1,
  timeoutMs: 60_000,
};

const USAGE = `usage: npm run bench -- [options]

  --quick                small sizes, one run each (under a minute)
  --sizes 10000,50000    initial-sync sizes (also env BENCH_N)
  --runs 3               repetitions of each timing (push and fanout: 9 unless given); medians are reported
  --only a,b             scenarios to run: ${SCENARIOS.map((s) => s.name).join(', ')}
  --systems a,b          systems to run: ${SYSTEMS.map((s) => s.id).join(', ')}
  --batch-size n         this project's client batchSize for pushes (default: the plugin's, 500; pulls use pullBatchSize, 2000)
  --push 10000           documents in the push scenario
  --latency-writes 300   sequential writes in the latency scenario
  --link 10000,100,20    slow-link scenario: documents, round-trip ms, Mbit/s each way
  --rxdb-batch-size 500  RxDB replication batch size, pull and push (its own default is 100)
  --in-process           run every scenario in this process (default: each in a fresh one)
  --profile              write a CPU profile of every measured span to <out>/profiles
  --out bench/out        where results.json and chart.svg go
  --help`;

function parseConfig() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      sizes: { type: 'string' },
      runs: { type: 'string' },
      only: { type: 'string' },
      systems: { type: 'string' },
      push: { type: 'string' },
      'latency-writes': { type: 'string' },
      link: { type: 'string' },
      'rxdb-batch-size': { type: 'string' },
      'batch-size': { type: 'string' },
      profile: { type: 'boolean', default: false },
      'in-process': { type: 'boolean', default: false },
      // Internal: this process runs the one scenario a parent run gave it (see runInChild).
      child: { type: 'boolean', default: false },
      out: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const positive = (name: string, raw: string | undefined) => {
    if (raw === undefined) return undefined;
    const value = Number(raw);
    if (!Number.isInteger(value) || value <= 0) throw new Error(`--${name} must be a positive integer, got "${raw}"`);
    return value;
  };
  const config: BenchConfig = { ...(values.quick ? QUICK : FULL) };
  const sizes = values.sizes ?? process.env.BENCH_N;
  if (sizes) config.sizes = sizes.split(',').map((size) => positive('sizes', size.trim().replace(/_/g, ''))!).sort((a, b) => a - b);
  const runs = positive('runs', values.runs);
  config.runs = runs ?? config.runs;
  config.shortRuns = runs ?? config.shortRuns;
  config.pushCount = positive('push', values.push) ?? config.pushCount;
  config.latencyWrites = positive('latency-writes', values['latency-writes']) ?? config.latencyWrites;
  if (values.link) {
    const [n, rttMs, mbitPerSecond] = values.link.split(',').map((part, i) => positive(`link (part ${i + 1})`, part.trim()));
    if (n === undefined || rttMs === undefined || mbitPerSecond === undefined) throw new Error(`--link takes documents,rtt-ms,mbit-per-second, got "${values.link}"`);
    config.slowLink = { n, rttMs, mbitPerSecond };
  }
  rxdbOptions.batchSize = positive('rxdb-batch-size', values['rxdb-batch-size']) ?? rxdbOptions.batchSize;
  const batchSize = positive('batch-size', values['batch-size']);
  if (batchSize !== undefined) offlineSyncOptions.batchSize = batchSize;
  const systemIds = values.systems?.split(',').map((id) => id.trim());
  const unknownSystems = systemIds?.filter((id) => !SYSTEMS.some((s) => s.id === id));
  if (unknownSystems?.length) throw new Error(`unknown system ${unknownSystems.join(', ')}; known: ${SYSTEMS.map((s) => s.id).join(', ')}`);
  const systems = systemIds ? SYSTEMS.filter((s) => systemIds.includes(s.id)) : SYSTEMS;
  const only = values.only?.split(',').map((name) => name.trim());
  const unknown = only?.filter((name) => !SCENARIOS.some((s) => s.name === name));
  if (unknown?.length) throw new Error(`unknown scenario ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  const scenarios = only ? SCENARIOS.filter((s) => only.includes(s.name)) : SCENARIOS;
  const here = dirname(fileURLToPath(import.meta.url));
  const outDir = resolve(values.out ?? join(here, 'out'));
  // Only a complete run with the standard settings replaces the chart the README shows.
  const standard =
    !values.quick && !sizes && !values.runs && !only && !systemIds && !values.push && !values['latency-writes'] && !values.link && !values['rxdb-batch-size'] && !batchSize;
  const isolated = !values.child && !values['in-process'] && scenarios.length > 1;
  return { config, scenarios, systems, outDir, profile: values.profile, child: values.child, isolated, publishedChart: standard ? join(here, 'chart.svg') : undefined };
}

/** Live heap after a full collection: shows whether earlier scenarios left anything behind. */
function heapMb(): number {
  gc();
  return Math.round(process.memoryUsage().heapUsed / 1024 / 1024);
}

function machine() {
  return {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGb: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  };
}

/**
 * Runs one scenario in a fresh process with this run's options, and
 * resolves with the figures it prints. A scenario run after others in the
 * same process meets what they left: code the JIT optimized for other
 * paths, a grown heap. After the slow-link scenario, say, this project's
 * push took 0.88× RxDB's time instead of 1.05× (both systems' code got
 * slower, by different amounts). Each in its own process, every scenario
 * starts from the same warm-up.
 */
function runInChild(scenario: string): Promise<Measurement[]> {
  const args: string[] = [];
  const given = process.argv.slice(2);
  for (let i = 0; i < given.length; i++) {
    if (given[i] === '--only') i++;
    else if (!given[i]!.startsWith('--only=')) args.push(given[i]!);
  }
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args, '--only', scenario, '--child'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const measurements: Measurement[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (!line.startsWith('{"scenario"')) return;
    console.log(line);
    measurements.push(JSON.parse(line) as Measurement);
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(measurements) : reject(new Error(`scenario ${scenario} failed (exit code ${code})`))));
  });
}

/** Warms up, then runs `scenarios` in this process, one after the other. */
async function runHere(config: BenchConfig, scenarios: readonly Scenario[], systems: ScenarioContext['systems'], log: (message: string) => void, measurements: Measurement[]): Promise<void> {
  // JIT warm-up for both systems and the floor, so that the first measured run does not pay for it. The
  // push warms up at its full size, twice: a push of 500 left much of its path (logging, the pending log,
  // the server's storage) to be optimized during the measured runs, which then fell run by run.
  const warmup = (overrides: Partial<BenchConfig>): ScenarioContext => ({ config: { ...QUICK, sizes: [2000], pushCount: 500, runs: 1, ...overrides }, systems: SYSTEMS, record: () => {}, log: () => {} });
  for (const scenario of [bulkInsertFloor, initialSync]) await scenario.run(warmup({}));
  await push.run(warmup({ pushCount: config.pushCount, shortRuns: 2 }));
  log('warm-up done');

  const ctx: ScenarioContext = {
    config,
    systems,
    log,
    record(measurement) {
      measurements.push(measurement);
      console.log(JSON.stringify({ ...measurement, value: Number(measurement.value.toFixed(3)), runs: measurement.runs.map((v) => Number(v.toFixed(3))) }));
    },
  };
  for (const scenario of scenarios) {
    log(`scenario ${scenario.name} (heap ${heapMb()} MB, load ${loadavg()[0]!.toFixed(2)})`);
    await scenario.run(ctx);
  }
  log(`scenarios done (heap ${heapMb()} MB, load ${loadavg()[0]!.toFixed(2)})`);
}

async function main(): Promise<void> {
  const { config, scenarios, systems, outDir, profile, child, isolated, publishedChart } = parseConfig();
  mkdirSync(outDir, { recursive: true });
  if (profile) enableProfiling(outDir);
  const started = performance.now();
  const measurements: Measurement[] = [];
  const log = (message: string) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1)}s] ${message}\n`);
  const info = { machine: machine(), config, batchSize: { ours: offlineSyncOptions.batchSize ?? 'default (push 500, pull 2000)', rxdb: rxdbOptions.batchSize } };
  if (child) {
    await runHere(config, scenarios, systems, log, measurements);
    return;
  }
  console.log(JSON.stringify(info));
  if (isolated) {
    for (const scenario of scenarios) {
      log(`scenario ${scenario.name}, in a process of its own (load ${loadavg()[0]!.toFixed(2)})`);
      measurements.push(...(await runInChild(scenario.name)));
    }
  } else {
    await runHere(config, scenarios, systems, log, measurements);
  }

  const labels = { ours: offlineSync.label, rxdb: rxdbWebsocket.label };
  const rows = summarize(measurements);
  console.log(`\n${summaryTable(rows, labels)}\n`);
  const seconds = (performance.now() - started) / 1000;
  const subtitle = `${info.machine.cpus} × ${info.machine.cpuModel}, Node ${info.machine.node}; memory storage, loopback, ${isolated ? 'one process per scenario' : 'one process'}`;
  const chart = renderChart(rows, labels, subtitle);
  writeFileSync(join(outDir, 'chart.svg'), chart);
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify({ ...info, seconds, measurements, summary: rows }, null, 2)}\n`);
  if (publishedChart) copyFileSync(join(outDir, 'chart.svg'), publishedChart);
  log(`done in ${seconds.toFixed(0)} s; wrote ${join(outDir, 'chart.svg')}${publishedChart ? ` and ${publishedChart}` : ''}`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
