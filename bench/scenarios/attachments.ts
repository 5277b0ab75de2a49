/**
 * Attachments: content going up from one device and down to another through
 * this project's server on SQLite with its FileBlobStore, in a child process
 * of its own (lib/attachments-server.ts). This project only: RxDB's
 * replication-websocket has no attachment sync to compare with. Its
 * replication protocol puts each attachment's whole content inside the
 * document, as a Blob, which its JSON messages turn into `{}`: the server's
 * copy names the attachment but holds no content (getData() throws). The
 * transfers are held against the link's floor instead:
 *
 *     floor = bytes × 8 ÷ bandwidth + 2 × round trip
 *
 * the time the bytes take on the link in one direction, plus one round trip
 * to begin (a request out, the first bytes back) and one to end (the last
 * bytes out, their answer back).
 *
 * - `upload`: device A, through a slow link of its own (slowLink's round
 *   trip and bandwidth), puts a `bytes` attachment on a synced document;
 *   timed from putAttachment() resolving until the server has stored the
 *   document's new version (pushed only once the content is on the server).
 * - `download`: device B, through a slow link of its own, syncing live;
 *   timed from that same push until B holds the content (not a placeholder).
 * - `resume`: an upload as above, the link cut once the server has
 *   acknowledged half of it, held cut OUTAGE_MS, then restored with every
 *   connection that lived through it destroyed (a new address). Bytes the
 *   server's blob store was given to append, beyond the content's length,
 *   are the bytes resent (target: one chunk at most).
 * - `rss`: a `rssBytes` attachment from A to B, both on loopback (the
 *   fastest the server is fed); the server's VmRSS sampled every 10 ms and
 *   its VmHWM (lib/attachments-rss.ts), growth over the idle server's VmRSS
 *   just before (target ≤ 64 MB).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BLOB_CHUNK_BYTES } from 'rxdb-offline-sync/protocol';
import { filter, firstValueFrom } from 'rxjs';
import { contentOf, holds, openDevice, type Device } from '../lib/attachments-devices.js';
import { watchRss } from '../lib/attachments-rss.js';
import { clock, type AttachmentServerConfig, type AttachmentServerReport, type AttachmentServerRequest } from '../lib/attachments-ipc.js';
import { profiled } from '../lib/profile.js';
import { gc, readyReport, sleep, withTimeout } from '../lib/runtime.js';
import { withoutThisProject, type Scenario, type ScenarioContext } from '../lib/scenario.js';
import { startSlowLink, type LinkOptions } from '../lib/slow-link.js';
import { median } from '../lib/stats.js';

const FILE = 'file.bin';
const TYPE = 'application/octet-stream';
/** How long the link stays cut in the resume part. */
const OUTAGE_MS = 1000;
const TARGET_RATIO = 1.3;
const TARGET_RSS_GROWTH_MB = 64;
const TARGET_RESENT_CHUNKS = 1;

const MiB = 1024 * 1024;
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const fixed = (value: number, digits = 0) => value.toFixed(digits);

/** The floor of moving `bytes` one way over `link`: see the file's comment. */
export function floorMs(bytes: number, link: LinkOptions): number {
  return (bytes * 8) / (link.mbitPerSecond * 1000) + 2 * link.rttMs;
}

/** The server's child process, as the scenario talks to it over IPC. */
class ServerChild {
  private nextRequest = 0;
  private readonly replies = new Map<number, (report: Extract<AttachmentServerReport, { type: 'appended' }>) => void>();
  private readonly pushes: number[] = [];
  private readonly pushWaiters = new Set<{ after: number; resolve: (at: number) => void }>();

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
  ) {
    child.on('message', (report: AttachmentServerReport) => {
      if (report.type === 'appended') {
        this.replies.get(report.id)?.(report);
        this.replies.delete(report.id);
      } else if (report.type === 'push') {
        this.pushes.push(report.at);
        for (const waiter of this.pushWaiters) {
          if (report.at <= waiter.after) continue;
          this.pushWaiters.delete(waiter);
          waiter.resolve(report.at);
        }
      }
    });
  }

  static async start(config: AttachmentServerConfig): Promise<ServerChild> {
    const entry = fileURLToPath(new URL('../lib/attachments-server.ts', import.meta.url));
    // The same loader flags (tsx) and tsconfig as this process.
    const child = fork(entry, [JSON.stringify(config)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const { port } = await readyReport<AttachmentServerReport>(child, 'the attachments server');
    return new ServerChild(child, port);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** When (clock()) the first push that stored events after `after` was stored. */
  pushAfter(after: number): Promise<number> {
    const known = this.pushes.find((at) => at > after);
    if (known !== undefined) return Promise.resolve(known);
    return new Promise((resolve) => this.pushWaiters.add({ after, resolve }));
  }

  /** Bytes given to the blob store's append so far, in how many calls, how many of them refused. */
  appended(): Promise<{ bytes: number; appends: number; refused: number }> {
    const id = this.nextRequest++;
    const answer = new Promise<Extract<AttachmentServerReport, { type: 'appended' }>>((resolve) => this.replies.set(id, resolve));
    this.child.send({ type: 'appended', id } satisfies AttachmentServerRequest);
    return withTimeout(answer, 30_000, 'the attachments server to report its appends');
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.send({ type: 'exit' } satisfies AttachmentServerRequest);
    try {
      await withTimeout(exited, 10_000, 'the attachments server to exit');
    } catch {
      this.child.kill('SIGKILL');
      await exited;
    }
  }
}

/** A document synced from `writer` to the server (and to `reader` when given), ready to take an attachment. */
async function syncedDocument(server: ServerChild, writer: Device, id: string, reader?: Device) {
  const since = clock();
  const arrived = reader ? firstValueFrom(reader.photos.findOne(id).$.pipe(filter((doc) => doc !== null))) : undefined;
  const doc = await writer.photos.insert({ id, title: `attachment ${id}` });
  await withTimeout(server.pushAfter(since), 30_000, `document ${id} to reach the server`);
  if (arrived) await withTimeout(arrived, 30_000, `document ${id} to reach the reader`);
  return doc;
}

/** Deletes the document on the server too: devices of later runs would otherwise download its content while they are timed. */
async function removeDocument(server: ServerChild, device: Device, id: string): Promise<void> {
  const since = clock();
  await (await device.photos.findOne(id).exec())!.remove();
  await withTimeout(server.pushAfter(since), 30_000, `the delete of ${id} to reach the server`);
}

type Context = Pick<ScenarioContext, 'config' | 'record' | 'log'>;

/** Upload by A and download by B, each through a slow link of its own. */
async function overSlowLink({ config, record, log }: Context, server: ServerChild, link: LinkOptions): Promise<void> {
  const { bytes } = config.attachments;
  const floor = floorMs(bytes, link);
  const uploads: number[] = [];
  const downloads: number[] = [];
  for (let run = 0; run < config.runs; run++) {
    const linkA = await startSlowLink(server.port, link);
    const linkB = await startSlowLink(server.port, link);
    const a = await openDevice(linkA.port);
    const b = await openDevice(linkB.port);
    try {
      const id = `slow-${run}`;
      const doc = await syncedDocument(server, a, id, b);
      const content = randomBytes(bytes);
      const digest = sha256(content);
      const held = holds(b.photos, id, FILE, digest);
      gc();
      const put = clock();
      const { started, pushedAt } = await profiled(`attachments-upload-run${run + 1}`, async () => {
        await doc.putAttachment({ id: FILE, type: TYPE, data: new Blob([content]) });
        const started = clock();
        const pushedAt = await withTimeout(server.pushAfter(started), config.timeoutMs, `the upload of ${bytes} bytes over a slow link`);
        return { started, pushedAt };
      });
      await withTimeout(held, config.timeoutMs, `device B to download ${bytes} bytes over a slow link`);
      const heldAt = clock();
      uploads.push(pushedAt - started);
      downloads.push(heldAt - pushedAt);
      if (sha256(await contentOf(b.photos, id, FILE)) !== digest) throw new Error('device B holds other bytes than device A put');
      await removeDocument(server, a, id);
      log(
        `attachments over a slow link, run ${run + 1}: putAttachment ${fixed(started - put)} ms, upload ${fixed(uploads.at(-1)!)} ms (${fixed(uploads.at(-1)! / floor, 2)}× floor), ` +
          `download ${fixed(downloads.at(-1)!)} ms (${fixed(downloads.at(-1)! / floor, 2)}× floor); floor ${fixed(floor)} ms`,
      );
    } finally {
      await a.close();
      await b.close();
      await linkA.close();
      await linkB.close();
    }
  }
  const linkNote = `${fixed(bytes / MiB, 1)} MiB (n = bytes), ${link.rttMs} ms round trip, ${link.mbitPerSecond} Mbit/s each way; floor = bytes × 8 ÷ bandwidth + 2 × round trip = ${fixed(floor)} ms`;
  for (const [metric, times] of [['upload', uploads], ['download', downloads]] as const) {
    const ratio = median(times) / floor;
    record({
      scenario: 'attachments',
      system: 'offline-sync',
      metric,
      unit: 'ms',
      value: median(times),
      runs: times,
      n: bytes,
      note: `${fixed(ratio, 2)}× the floor (target ≤ ${TARGET_RATIO}×: ${ratio <= TARGET_RATIO ? 'met' : 'missed'}); ${linkNote}`,
    });
  }
  record({ scenario: 'attachments', system: 'offline-sync', metric: 'floor', unit: 'ms', value: floor, runs: [floor], n: bytes, note: linkNote });
}

/** An upload over a slow link, cut once half of it is acknowledged, restored with its connections reset. */
async function resume({ config, record, log }: Context, server: ServerChild, link: LinkOptions): Promise<void> {
  const { bytes } = config.attachments;
  const slow = await startSlowLink(server.port, link);
  const a = await openDevice(slow.port);
  try {
    const doc = await syncedDocument(server, a, 'resume');
    const content = randomBytes(bytes);
    const digest = sha256(content);
    const half = firstValueFrom(a.sync.transfers$.pipe(filter((list) => list.some((t) => t.direction === 'upload' && t.digest === digest && t.done >= bytes / 2))));
    const before = await server.appended();
    await doc.putAttachment({ id: FILE, type: TYPE, data: new Blob([content]) });
    const started = clock();
    await withTimeout(half, config.timeoutMs, 'half of the upload to be acknowledged');
    slow.cut();
    const cutAt = clock();
    await sleep(OUTAGE_MS);
    slow.restore({ reset: true });
    const restoredAt = clock();
    const pushedAt = await withTimeout(server.pushAfter(restoredAt), config.timeoutMs, 'the resumed upload');
    const after = await server.appended();
    const resent = after.bytes - before.bytes - bytes;
    const chunks = resent / BLOB_CHUNK_BYTES;
    const floor = floorMs(bytes, link);
    const note =
      `${after.bytes - before.bytes} bytes given to the blob store for ${bytes} (${after.appends - before.appends} appends, ${after.refused - before.refused} refused); ` +
      `cut ${fixed(cutAt - started)} ms into the upload for ${OUTAGE_MS} ms, connections reset; stored ${fixed(pushedAt - restoredAt)} ms after the restore, ` +
      `${fixed(pushedAt - started - OUTAGE_MS)} ms of upload in all without the outage (floor ${fixed(floor)} ms); target ≤ ${TARGET_RESENT_CHUNKS} chunk resent: ${chunks <= TARGET_RESENT_CHUNKS ? 'met' : 'missed'}`;
    log(`attachments resume: ${resent} bytes resent (${fixed(chunks, 2)} chunks of ${BLOB_CHUNK_BYTES}); ${note}`);
    record({ scenario: 'attachments', system: 'offline-sync', metric: 'resume-resent', unit: 'MB', value: resent / MiB, runs: [resent / MiB], n: bytes, note: `${fixed(chunks, 2)} chunks; ${note}` });
    await removeDocument(server, a, 'resume');
    record({ scenario: 'attachments', system: 'offline-sync', metric: 'resume-time', unit: 'ms', value: pushedAt - restoredAt, runs: [pushedAt - restoredAt], n: bytes, note: 'from the restore until the server stored the document' });
  } finally {
    await a.close();
    await slow.close();
  }
}

/** A large attachment from A to B on loopback, the server's RSS watched throughout. */
async function serverMemory({ config, record, log }: Context, server: ServerChild): Promise<void> {
  const bytes = config.attachments.rssBytes;
  const a = await openDevice(server.port);
  const b = await openDevice(server.port);
  try {
    const doc = await syncedDocument(server, a, 'large', b);
    const content = randomBytes(bytes);
    const digest = sha256(content);
    const held = holds(b.photos, 'large', FILE, digest);
    gc();
    const watch = watchRss(server.pid);
    const started = clock();
    await doc.putAttachment({ id: FILE, type: TYPE, data: new Blob([content]) });
    const put = clock();
    const pushedAt = await withTimeout(server.pushAfter(put), config.timeoutMs, `the upload of ${bytes} bytes`);
    const downloadFrom = performance.now();
    const uploadPeak = watch.peakSince();
    await withTimeout(held, config.timeoutMs, `device B to download ${bytes} bytes`);
    const heldAt = clock();
    const downloadPeak = watch.peakSince(downloadFrom);
    const memory = watch.stop();
    if (sha256(await contentOf(b.photos, 'large', FILE)) !== digest) throw new Error('device B holds other bytes than device A put');
    const rate = (ms: number) => `${fixed(bytes / MiB / (ms / 1000), 1)} MiB/s`;
    const note =
      `server VmRSS ${fixed(memory.baselineMb)} MB idle before, sampled peak ${fixed(memory.sampledPeakMb)} MB (upload ${fixed(uploadPeak)}, download ${fixed(downloadPeak)}), ` +
      `VmHWM ${memory.hwmMb !== undefined ? `${fixed(memory.hwmMb)} MB` : 'not resettable here'}; upload ${fixed(pushedAt - put)} ms (${rate(pushedAt - put)}, putAttachment ${fixed(put - started)} ms before), ` +
      `download ${fixed(heldAt - pushedAt)} ms (${rate(heldAt - pushedAt)}), loopback; target growth ≤ ${TARGET_RSS_GROWTH_MB} MB: ${memory.growthMb <= TARGET_RSS_GROWTH_MB ? 'met' : 'missed'}`;
    log(`attachments server memory, ${fixed(bytes / MiB)} MiB: growth ${fixed(memory.growthMb)} MB; ${note}`);
    record({ scenario: 'attachments', system: 'offline-sync', metric: 'server-rss-growth', unit: 'MB', value: memory.growthMb, runs: [memory.growthMb], n: bytes, storage: 'sqlite+files', note });
    record({ scenario: 'attachments', system: 'offline-sync', metric: 'server-rss-peak', unit: 'MB', value: memory.peakMb, runs: [memory.peakMb], n: bytes, storage: 'sqlite+files' });
  } finally {
    await a.close();
    await b.close();
  }
}

export const attachments: Scenario = {
  name: 'attachments',
  async run({ config, systems, record, log }) {
    if (withoutThisProject({ systems, log }, 'attachments')) return;
    const link: LinkOptions = { rttMs: config.slowLink.rttMs, mbitPerSecond: config.slowLink.mbitPerSecond };
    const directory = mkdtempSync(join(tmpdir(), 'bench-attachments-'));
    const { bytes, rssBytes } = config.attachments;
    const server = await ServerChild.start({ path: join(directory, 'sync.db'), maxAttachmentBytes: 2 * Math.max(bytes, rssBytes) });
    try {
      const ctx = { config, record, log };
      await overSlowLink(ctx, server, link);
      await resume(ctx, server, link);
      await serverMemory(ctx, server);
    } finally {
      await server.stop();
      rmSync(directory, { recursive: true, force: true });
    }
  },
};
