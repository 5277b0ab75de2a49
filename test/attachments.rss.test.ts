/**
 * The server's memory while a large attachment goes through it. The CLI's
 * server (`serve --storage sqlite:<path>`: documents in SQLite, content in
 * a FileBlobStore beside it) runs in a child process, so that its RSS is
 * its own; each device reaches it through a link proxy of its own
 * (bench/lib/slow-link.ts: a 10 ms round trip, 400 Mbit/s each way). The
 * content arrives whole, and the server holds no more than a few chunks of
 * it at a time: its RSS grows by well under the content's size.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { addRxPlugin, createRxDatabase, type RxCollection, type RxDatabase } from 'rxdb';
import { RxDBAttachmentsPlugin } from 'rxdb/plugins/attachments';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { afterEach, describe, expect, it } from 'vitest';
import { watchRss } from '../bench/lib/attachments-rss.js';
import { startSlowLink, type SlowLink } from '../bench/lib/slow-link.js';
import { createSyncPlugin } from '../src/client/index.js';
import { parsePlaceholder } from '../src/shared/attachments.js';
import { photoSchema, type Photo } from './fixtures/photos.js';
import { uniqueName, waitFor } from './helpers.js';

addRxPlugin(RxDBAttachmentsPlugin);

const CONTENT_BYTES = 50_000_000;
const MAX_RSS_GROWTH_MB = 64;
const LINK = { rttMs: 10, mbitPerSecond: 400 };
const ROOT = fileURLToPath(new URL('..', import.meta.url));


const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

const cleanups: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** `rxdb-offline-sync serve` on SQLite in a temp folder, on a free loopback port; resolves once it listens. */
async function serveCli(): Promise<{ port: number; pid: number }> {
  const directory = mkdtempSync(join(tmpdir(), 'rxos-rss-'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  const args = ['--import', 'tsx', 'src/cli.ts', 'serve', '--storage', `sqlite:${join(directory, 'sync.db')}`, '--port', '0', '--host', '127.0.0.1', '--log-level', 'warn'];
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.push(() => stop(child));
  let output = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the CLI server did not start within 30 s:\n${output}`)), 30_000);
    const read = (chunk: Buffer) => {
      output += chunk.toString();
      const listening = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
      if (!listening) return;
      clearTimeout(timer);
      resolve(Number(listening[1]));
    };
    child.stdout!.on('data', read);
    child.stderr!.on('data', read);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the CLI server exited with code ${code}:\n${output}`));
    });
  });
  return { port, pid: child.pid! };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** A device on memory storage that reaches the server through a link of its own. */
async function device(serverPort: number): Promise<RxCollection<Photo>> {
  const link: SlowLink = await startSlowLink(serverPort, LINK);
  cleanups.push(() => link.close());
  const db: RxDatabase<{ photos: RxCollection<Photo> }> = await createRxDatabase({ name: uniqueName('rss'), storage: getRxStorageMemory(), multiInstance: false });
  cleanups.push(() => db.close());
  await db.addCollections({ photos: { schema: photoSchema } });
  await db.addPlugin(createSyncPlugin({ serverUrl: `http://127.0.0.1:${link.port}`, collections: ['photos'], logging: { enabled: false } }));
  return db.photos;
}

/** The attachment's bytes once this device holds its content (not a placeholder), else undefined. */
async function contentOf(photos: RxCollection<Photo>, id: string, attachmentId: string): Promise<Uint8Array | undefined> {
  const attachment = (await photos.findOne(id).exec())?.getAttachment(attachmentId);
  if (!attachment || parsePlaceholder(attachment.digest)) return undefined;
  return new Uint8Array(await (await attachment.getData()).arrayBuffer());
}

describe.skipIf(process.platform !== 'linux')('server memory under a large attachment (Linux: reads /proc)', () => {
  it(`a ${CONTENT_BYTES / 1e6} MB attachment goes from one device to another; the server's RSS grows by less than ${MAX_RSS_GROWTH_MB} MB`, async () => {
    const server = await serveCli();
    const alice = await device(server.port);
    const bob = await device(server.port);
    // A small attachment first, so that what the server's first transfer loads and compiles is not counted.
    const warmUp = randomBytes(3 * 256 * 1024);
    const first = await alice.insert({ id: 'warm-up', title: 'first' });
    await first.putAttachment({ id: 'small.bin', type: 'application/octet-stream', data: new Blob([warmUp]) });
    await waitFor(async () => (await bob.findOne('warm-up').exec())?.getAttachment('small.bin')?.digest === sha256(warmUp), 'bob to hold the small attachment', 30_000);
    const doc = await alice.insert({ id: 'survey', title: 'site survey' });
    await waitFor(async () => (await bob.findOne('survey').exec()) !== null, 'bob to get the document', 30_000);

    const content = randomBytes(CONTENT_BYTES);
    const digest = sha256(content);
    const memory = watchRss(server.pid);
    await doc.putAttachment({ id: 'scan.bin', type: 'application/octet-stream', data: new Blob([content]) });
    await waitFor(async () => (await bob.findOne('survey').exec())?.getAttachment('scan.bin')?.digest === digest, 'bob to hold the content', 90_000);
    const { growthMb, baselineMb, peakMb } = memory.stop();

    expect(sha256((await contentOf(bob, 'survey', 'scan.bin'))!)).toBe(digest);
    expect(growthMb, `server RSS ${baselineMb.toFixed(0)} MB before, ${peakMb.toFixed(0)} MB at its peak`).toBeLessThan(MAX_RSS_GROWTH_MB);
  }, 150_000);
});
