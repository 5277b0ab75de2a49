/**
 * Attachments in real headless Chromium: RxDB on IndexedDB (Dexie), two
 * browser contexts as two devices, a photo added on one appearing on the
 * other, byte for byte, and staying there across a reload without being
 * downloaded again. The page (test/fixtures/attachments-page) is built by
 * Vite and served by the CLI's own `serve()`.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/cli/serve.js';
import { BLOB_CHUNK_BYTES } from '../src/shared/protocol/index.js';
import type { StoredPhoto } from './fixtures/attachments-page/main.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const available = existsSync(CHROMIUM);
if (!available) {
  if (process.env.REQUIRE_SERVICES === '1') {
    throw new Error(`${CHROMIUM} is missing and REQUIRE_SERVICES=1: install it with "apt-get install -y chromium"`);
  }
  console.warn(`e2e.attachments.browser: skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
}

const pageRoot = join(import.meta.dirname, 'fixtures', 'attachments-page');
const screenshots = join(import.meta.dirname, '..', 'test-results');
/** 320×320 random pixels: a PNG of about 300 KB, two chunks. */
const PHOTO_SIZE = 320;

describe.skipIf(!available)('attachments in Chromium', () => {
  let outDir: string;
  let server: RunningServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;
  /** Chunks the server read for downloads, by digest. */
  const chunksRead = new Map<string, number>();
  /** While set, the server's reads of blobs wait for it: downloads stall. */
  let readsHeld: Promise<void> | undefined;

  beforeAll(async () => {
    outDir = mkdtempSync(join(tmpdir(), 'attachments-page-'));
    await build({
      root: pageRoot,
      configFile: false,
      base: './',
      logLevel: 'warn',
      // The page imports the plugin by its package name, as an app would; here it comes from the sources.
      resolve: { alias: { 'rxdb-offline-sync': fileURLToPath(new URL('../src/client/index.ts', import.meta.url)) } },
      build: { outDir, emptyOutDir: true, target: 'es2022', chunkSizeWarningLimit: 2000 },
    });
    server = await serve({ port: 0, host: '127.0.0.1', storage: { kind: 'memory' }, logLevel: 'silent', staticDir: outDir });
    const blobs = server.syncServer!.getBlobStore()!;
    const read = blobs.read.bind(blobs);
    blobs.read = async (digest, offset, length) => {
      chunksRead.set(digest, (chunksRead.get(digest) ?? 0) + 1);
      await readsHeld;
      return read(digest, offset, length);
    };
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    [alice, bob] = await Promise.all([openDevice('alice'), openDevice('bob')]);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  /** A new browser context: its own IndexedDB, like a second device. */
  async function openDevice(name: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 640, height: 360 } });
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`${name} page error:`, error.message));
    page.on('console', (message) => {
      if (message.type() === 'error') console.error(`${name} console:`, message.text());
    });
    await page.goto(`${server.url}/?device=${name}`);
    await waitReady(page);
    return page;
  }

  async function waitReady(page: Page): Promise<void> {
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
    await page.waitForFunction(() => window.photoPage.status().connected, undefined, { timeout: 15_000 });
  }

  const putPhoto = (page: Page, id: string, attachmentId: string) =>
    page.evaluate(([id, attachmentId, size]) => window.photoPage.putPhoto(id, attachmentId, size), [id, attachmentId, PHOTO_SIZE] as const);
  const photoOn = (page: Page, id: string, attachmentId: string) =>
    page.evaluate(([id, attachmentId]) => window.photoPage.photo(id, attachmentId), [id, attachmentId] as const);

  /** Waits until `page` holds the attachment's content (not a placeholder), and returns it. */
  async function arrived(page: Page, id: string, attachmentId: string): Promise<StoredPhoto> {
    await expect.poll(async () => (await photoOn(page, id, attachmentId))?.placeholder === false, { timeout: 30_000, interval: 100 }).toBe(true);
    return (await photoOn(page, id, attachmentId))!;
  }

  it('a photo added on one device appears on the other, byte for byte, both ways', async () => {
    const sent = await putPhoto(alice, 'p1', 'front.png');
    expect(sent.placeholder).toBe(false);
    expect(sent.type).toBe('image/png');
    // Two chunks at least, so the transfer is a real chunked one.
    expect(sent.length).toBeGreaterThan(BLOB_CHUNK_BYTES);
    // RxDB's digest in the browser is the SHA-256 of the bytes, which sync addresses content by.
    expect(sent.digest).toBe(sent.sha256);

    const received = await arrived(bob, 'p1', 'front.png');
    expect(received).toEqual(sent);
    expect(chunksRead.get(sent.digest)).toBe(Math.ceil(sent.length / BLOB_CHUNK_BYTES));
    const bobsDownloads = (await bob.evaluate(() => window.photoPage.transfersSeen())).filter((t) => t.direction === 'download');
    expect(bobsDownloads.length).toBeGreaterThan(0);
    expect(bobsDownloads.every((t) => t.digest === sent.digest && t.total === sent.length)).toBe(true);

    const back = await putPhoto(bob, 'p2', 'back.png');
    expect(back.length).toBeGreaterThan(BLOB_CHUNK_BYTES);
    expect(await arrived(alice, 'p2', 'back.png')).toEqual(back);
    expect(await photoOn(alice, 'p1', 'front.png')).toEqual(sent);

    for (const page of [alice, bob]) {
      await expect.poll(() => page.evaluate(() => window.photoPage.status().pendingEvents), { timeout: 15_000 }).toBe(0);
      expect(await page.evaluate(() => window.photoPage.status().rejectedEvents)).toBe(0);
    }
    mkdirSync(screenshots, { recursive: true });
    await bob.screenshot({ path: join(screenshots, 'e2e-attachments-bob.png') });
  }, 60_000);

  it('keeps a received photo in IndexedDB across a reload, without downloading it again', async () => {
    const before = await photoOn(bob, 'p1', 'front.png');
    expect(before?.placeholder).toBe(false);
    const readsBefore = new Map(chunksRead);

    await bob.reload();
    await waitReady(bob);
    // A whole sync round after the reload: whatever it would download, it has asked for by then.
    await bob.evaluate(() => window.photoPage.syncNow());
    expect(await photoOn(bob, 'p1', 'front.png')).toEqual(before);
    expect(await photoOn(bob, 'p2', 'back.png')).toMatchObject({ placeholder: false, type: 'image/png' });
    expect(await bob.evaluate(() => window.photoPage.transfersSeen())).toEqual([]);
    expect(chunksRead).toEqual(readsBefore);
  }, 60_000);

  it('a download cut by a reload goes on after it, from the placeholder kept in IndexedDB', async () => {
    let release!: () => void;
    readsHeld = new Promise((resolve) => (release = resolve));
    const sent = await putPhoto(alice, 'p3', 'side.png');
    // Bob has the document, with a placeholder for the photo, and has asked for its first chunk.
    await expect.poll(() => photoOn(bob, 'p3', 'side.png'), { timeout: 15_000 }).toMatchObject({ placeholder: true, type: 'image/png' });
    await expect.poll(() => chunksRead.get(sent.digest) ?? 0, { timeout: 15_000 }).toBeGreaterThan(0);

    await bob.reload();
    readsHeld = undefined;
    release();
    await waitReady(bob);
    expect(await arrived(bob, 'p3', 'side.png')).toEqual(sent);
    expect(await photoOn(bob, 'p1', 'front.png')).toMatchObject({ placeholder: false });
  }, 60_000);
});
