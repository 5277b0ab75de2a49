/**
 * The example todo app in real headless Chromium, served by the CLI's own
 * `serve()` from a fresh Vite build. Two browser contexts are two devices:
 * each has its own IndexedDB and syncs through the server.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/cli/serve.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const available = existsSync(CHROMIUM);
if (!available) {
  if (process.env.REQUIRE_SERVICES === '1') {
    throw new Error(`${CHROMIUM} is missing and REQUIRE_SERVICES=1: install it with "apt-get install -y chromium"`);
  }
  console.warn(`e2e.browser: skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
}

const appRoot = join(import.meta.dirname, '..', 'examples', 'todo-app');
const screenshots = join(import.meta.dirname, '..', 'test-results');

describe.skipIf(!available)('todo app in Chromium', () => {
  let outDir: string;
  let server: RunningServer;
  let browser: Browser;
  let alice: Page;
  let bob: Page;

  beforeAll(async () => {
    outDir = mkdtempSync(join(tmpdir(), 'todo-app-'));
    await build({ root: appRoot, configFile: join(appRoot, 'vite.config.ts'), logLevel: 'warn', build: { outDir, emptyOutDir: true } });
    server = await startSyncServer(0);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    [alice, bob] = await Promise.all([openDevice(), openDevice()]);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  /** The sync server, durable (SQLite in the build's folder) so that a restart keeps what it stored. */
  function startSyncServer(port: number): Promise<RunningServer> {
    return serve({ port, host: '127.0.0.1', storage: { kind: 'sqlite', path: join(outDir, 'sync.db') }, logLevel: 'silent', staticDir: outDir });
  }

  /** A new browser context: its own cookies, storage and IndexedDB, like a second device. */
  async function openDevice(): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 800, height: 720 } });
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error('page error:', error.message));
    await load(page);
    return page;
  }

  async function load(page: Page): Promise<void> {
    if (page.url() === 'about:blank') await page.goto(`${server.url}/`);
    else await page.reload();
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
  }

  const connection = (page: Page) => page.getByTestId('connection');
  const titles = (page: Page) => page.$$eval('[data-testid="title"]', (inputs) => inputs.map((input) => (input as HTMLInputElement).value));

  async function waitForTitles(page: Page, expected: string[]): Promise<void> {
    await page.waitForFunction(
      (wanted) => JSON.stringify(Array.from(document.querySelectorAll<HTMLInputElement>('[data-testid="title"]'), (input) => input.value)) === JSON.stringify(wanted),
      expected,
      { timeout: 15_000 },
    );
  }

  async function add(page: Page, title: string): Promise<void> {
    await page.getByTestId('new-title').fill(title);
    await page.getByTestId('new-title').press('Enter');
  }

  async function rename(page: Page, index: number, title: string): Promise<void> {
    const input = page.getByTestId('todo').nth(index).getByTestId('title');
    await input.fill(title);
    await input.press('Enter');
  }

  it('shows an edit made on one device on the other', async () => {
    await expect.poll(() => connection(alice).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');
    await expect.poll(() => connection(bob).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');

    await add(alice, 'Buy milk');
    await add(alice, 'Call the harbour master');
    await waitForTitles(bob, ['Buy milk', 'Call the harbour master']);

    await bob.getByTestId('todo').nth(0).getByTestId('toggle').check();
    await expect.poll(() => alice.getByTestId('todo').nth(0).getByTestId('toggle').isChecked(), { timeout: 15_000 }).toBe(true);

    await rename(bob, 1, 'Call the harbour master at 9');
    await waitForTitles(alice, ['Buy milk', 'Call the harbour master at 9']);
  }, 60_000);

  it('keeps an offline edit across a reload and delivers it when back online', async () => {
    await alice.getByTestId('offline-switch').check();
    await expect.poll(() => connection(alice).getAttribute('data-state')).toBe('offline');

    // Bob edits the same todo first; Alice's later offline edit wins by last-write-wins.
    await rename(bob, 0, 'Buy milk (Bob)');
    await rename(alice, 0, 'Buy oat milk (Alice, offline)');
    await add(alice, 'Added offline');
    await expect.poll(() => alice.getByTestId('pending').textContent()).toBe('2');

    await load(alice);
    // Still offline after the reload, with both edits read back from IndexedDB and still pending.
    await expect.poll(() => connection(alice).getAttribute('data-state')).toBe('offline');
    expect(await titles(alice)).toEqual(['Buy oat milk (Alice, offline)', 'Call the harbour master at 9', 'Added offline']);
    await expect.poll(() => alice.getByTestId('pending').textContent()).toBe('2');
    expect(await titles(bob)).toEqual(['Buy milk (Bob)', 'Call the harbour master at 9']);

    await alice.getByTestId('offline-switch').uncheck();
    const converged = ['Buy oat milk (Alice, offline)', 'Call the harbour master at 9', 'Added offline'];
    await waitForTitles(bob, converged);
    await waitForTitles(alice, converged);
    await expect.poll(() => alice.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    await expect.poll(() => alice.getByTestId('conflicts-resolved').textContent()).toBe('1');
    await expect.poll(() => connection(alice).getAttribute('data-state')).toBe('online');

    mkdirSync(screenshots, { recursive: true });
    await alice.screenshot({ path: join(screenshots, 'e2e-alice.png') });
    await bob.screenshot({ path: join(screenshots, 'e2e-bob.png') });
  }, 60_000);

  const afterOffline = ['Buy oat milk (Alice, offline)', 'Call the harbour master at 9', 'Added offline'];

  it('shows a network cut at once, and syncs what was written meanwhile as soon as the network is back', async () => {
    await expect.poll(() => connection(alice).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');
    await alice.context().setOffline(true);
    // The browser's offline event: no waiting for a heartbeat (the watchdog would take 5 s).
    await expect.poll(() => connection(alice).getAttribute('data-state'), { timeout: 5000 }).not.toBe('online');
    await add(alice, 'Written in the tunnel');
    await expect.poll(() => alice.getByTestId('pending').textContent()).toBe('1');

    await alice.context().setOffline(false);
    await waitForTitles(bob, [...afterOffline, 'Written in the tunnel']);
    await expect.poll(() => alice.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    await expect.poll(() => connection(alice).getAttribute('data-state')).toBe('online');
  }, 60_000);

  it('comes back on its own when the server is killed and started again, with what was written meanwhile', async () => {
    const port = server.port;
    await server.close();
    await expect.poll(() => connection(alice).getAttribute('data-state'), { timeout: 10_000 }).not.toBe('online');
    await add(alice, 'Written while the server was down');
    await expect.poll(() => alice.getByTestId('pending').textContent()).toBe('1');

    server = await startSyncServer(port);
    // Backoff is capped at 2 s: both devices are back soon after the server is.
    await waitForTitles(bob, [...afterOffline, 'Written in the tunnel', 'Written while the server was down']);
    await expect.poll(() => alice.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    await expect.poll(() => connection(bob).getAttribute('data-state')).toBe('online');
  }, 60_000);

  it('two tabs of one browser show one status, obey one switch, and either can Sync now', async () => {
    const before = [...afterOffline, 'Written in the tunnel', 'Written while the server was down'];
    const second = await alice.context().newPage();
    second.on('pageerror', (error) => console.error('page error:', error.message));
    await load(second);
    await expect.poll(() => connection(second).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');

    // "Work offline" in one tab takes the database offline, whichever tab leads.
    await second.getByTestId('offline-switch').check();
    await expect.poll(() => connection(alice).getAttribute('data-state')).toBe('offline');
    await add(second, 'Written in a second tab');
    await expect.poll(() => alice.getByTestId('pending').textContent()).toBe('1');
    await expect.poll(() => second.getByTestId('pending').textContent()).toBe('1');
    expect(await titles(bob)).toEqual(before);

    await alice.getByTestId('offline-switch').uncheck();
    await waitForTitles(bob, [...before, 'Written in a second tab']);
    await expect.poll(() => second.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    await expect.poll(() => connection(second).getAttribute('data-state')).toBe('online');

    for (const page of [alice, second]) {
      await page.locator('#sync-now').click();
      await expect.poll(() => page.locator('#log').textContent(), { timeout: 15_000 }).toContain('Synced');
    }
    await second.close();
  }, 60_000);
});
