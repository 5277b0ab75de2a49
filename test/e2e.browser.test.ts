/**
 * The example todo app in real headless Chromium, served by the CLI's own
 * `serve()` from a fresh Vite build, with the app's demo sign-in. Browser
 * contexts are devices: each has its own IndexedDB and syncs through the
 * server. `alice` and `bob` are two devices of the demo user Ana; `ben` is
 * the other demo user.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type RunningServer } from '../src/cli/serve.js';
import { createDemoAuth } from '../examples/todo-app/server/demo-auth.js';

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
  let ben: Page;

  beforeAll(async () => {
    outDir = mkdtempSync(join(tmpdir(), 'todo-app-'));
    await build({ root: appRoot, configFile: join(appRoot, 'vite.config.ts'), logLevel: 'warn', build: { outDir, emptyOutDir: true } });
    server = await startSyncServer(0);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    [alice, bob, ben] = await Promise.all([openDevice('ana'), openDevice('ana'), openDevice('ben')]);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  /**
   * The sync server, durable (SQLite in the build's folder) so that a restart keeps what it stored,
   * with the demo sign-in as `npm start` runs it (one key across restarts, as a deployment keeps its own).
   */
  function startSyncServer(port: number): Promise<RunningServer> {
    const auth = createDemoAuth({ secret: 'e2e' });
    return serve({
      port,
      host: '127.0.0.1',
      storage: { kind: 'sqlite', path: join(outDir, 'sync.db') },
      logLevel: 'silent',
      staticDir: outDir,
      authenticate: auth.authenticate,
      authorize: auth.authorize,
      handleRequest: auth.handleRequest,
    });
  }

  /** A new browser context: its own cookies, storage and IndexedDB, like a second device; signed in through the picker. */
  async function openDevice(user: 'ana' | 'ben', path = '/'): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error('page error:', error.message));
    await page.goto(`${server.url}${path}`);
    await page.waitForSelector('body[data-ready="signin"]', { timeout: 15_000 });
    await page.getByTestId(`sign-in-${user}`).click();
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
    return page;
  }

  /** Opens the app in a new tab of a signed-in device, or reloads it. */
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
    // Said in plain words, with the code folded into the line's details.
    await alice.locator('#sync-now').click();
    await expect.poll(() => alice.locator('#log li').first().textContent(), { timeout: 15_000 }).toContain("Can't reach the server — changes are kept");
    expect(await alice.locator('#log li').first().locator('details code').textContent()).toMatch(/^NOT_CONNECTED: /);
    await shot(alice, 'e2e-server-down');

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

  const rows = (page: Page) => page.getByTestId('todo');
  const row = (page: Page, title: string) => page.locator(`[data-testid="todo"][data-title=${JSON.stringify(title)}]`);
  const showList = (page: Page, list: 'mine' | 'shared') => page.getByTestId(`list-${list}`).click();
  const shot = async (page: Page, name: string) => {
    mkdirSync(screenshots, { recursive: true });
    await page.screenshot({ path: join(screenshots, `${name}.png`) });
  };

  it('starts at any deep URL, every asset loading from the root', async () => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    const page = await context.newPage();
    const failures: string[] = [];
    page.on('response', (response) => {
      if (response.status() >= 400) failures.push(`${response.status()} ${response.url()}`);
    });
    await page.goto(`${server.url}/crew/north/today`);
    await page.waitForSelector('body[data-ready="signin"]', { timeout: 15_000 });
    await page.getByTestId('sign-in-ben').click();
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
    await expect.poll(() => connection(page).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');
    expect(failures).toEqual([]);
    await context.close();
  }, 60_000);

  it("keeps each user's private list to that user, on every path", async () => {
    await add(ben, "Ben's private note");
    await showList(ben, 'shared');
    await add(ben, 'For the whole crew');
    await showList(alice, 'shared');
    await waitForTitles(alice, ['For the whole crew']);
    await showList(bob, 'shared');
    await waitForTitles(bob, ['For the whole crew']);
    await showList(alice, 'mine');
    expect(await titles(alice)).not.toContain("Ben's private note");

    // Ana's device writes straight into Ben's list, past the UI: the server refuses it, and Ben never sees it.
    const refused = await alice.evaluate(async () => {
      const { db, sync } = (window as unknown as { todoApp: { db: any; sync: any } }).todoApp;
      await db.todos.insert({ id: 'planted', title: 'Planted by Ana', done: false, createdAt: Date.now(), list: 'ben', owner: 'ben', editedBy: 'x' });
      await sync.awaitInSync().catch(() => undefined);
      const deadline = Date.now() + 15_000;
      while (sync.getStatus().rejectedEvents === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      const rejected = sync.getRejectedEvents().map((event: { error: { code: string } }) => event.error.code);
      await sync.clearRejectedEvents();
      return rejected;
    });
    expect(refused).toEqual(['UNAUTHORIZED']);
    await add(alice, 'Ana only');
    await expect.poll(() => alice.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    const lists = (page: Page) => page.evaluate(async () => {
      const { db } = (window as unknown as { todoApp: { db: any } }).todoApp;
      return (await db.todos.find().exec()).map((doc: { title: string }) => doc.title).sort();
    });
    await expect.poll(() => lists(bob), { timeout: 15_000 }).toContain('Ana only');
    // Ben's device pulls everything it may read after Ana's writes were stored: none of them is among it.
    await ben.locator('#sync-now').click();
    await expect.poll(() => ben.locator('#log').textContent(), { timeout: 15_000 }).toContain('Synced with the server');
    expect(await lists(ben)).not.toContain('Ana only');
    expect(await lists(ben)).not.toContain('Planted by Ana');
    expect(await lists(alice)).not.toContain("Ben's private note");
    expect(await lists(bob)).not.toContain("Ben's private note");
  }, 60_000);

  it('marks each todo not synced until the server acknowledges it, with a count per list', async () => {
    await showList(alice, 'shared');
    await alice.getByTestId('offline-switch').check();
    await add(alice, 'Check the pump');
    await row(alice, 'Check the pump').getByTestId('unsynced').waitFor({ state: 'visible', timeout: 15_000 });
    await expect.poll(() => alice.getByTestId('list-shared').getByTestId('list-pending').textContent()).toBe('1');
    expect(await alice.getByTestId('list-mine').getByTestId('list-pending').isHidden()).toBe(true);
    expect(await row(alice, 'For the whole crew').getByTestId('unsynced').isHidden()).toBe(true);
    await shot(alice, 'e2e-unsynced');

    await alice.getByTestId('offline-switch').uncheck();
    await row(alice, 'Check the pump').getByTestId('unsynced').waitFor({ state: 'hidden', timeout: 15_000 });
    await alice.getByTestId('list-shared').getByTestId('list-pending').waitFor({ state: 'hidden', timeout: 15_000 });
    await expect.poll(() => alice.locator('#log').textContent(), { timeout: 15_000 }).toContain('Saved on the server: "Check the pump"');
    await waitForTitles(ben, ['For the whole crew', 'Check the pump']);
  }, 60_000);

  it('merges a rename on one device and a tick on another, and keeps the settled count across a reload', async () => {
    await ben.getByTestId('offline-switch').check();
    await rename(alice, 1, 'Check the pump before noon');
    await waitForTitles(bob, ['For the whole crew', 'Check the pump before noon']);
    await rows(ben).nth(1).getByTestId('toggle').check();
    const before = Number(await ben.getByTestId('conflicts-resolved').textContent());
    await ben.getByTestId('offline-switch').uncheck();

    await waitForTitles(ben, ['For the whole crew', 'Check the pump before noon']);
    await expect.poll(() => alice.getByTestId('todo').nth(1).getByTestId('toggle').isChecked(), { timeout: 15_000 }).toBe(true);
    expect(await rows(ben).nth(1).getByTestId('toggle').isChecked()).toBe(true);
    await expect.poll(() => ben.getByTestId('conflicts-resolved').textContent()).toBe(String(before + 1));
    await expect.poll(() => ben.locator('#log').textContent()).toContain('merged both changes');
    await load(ben);
    await expect.poll(() => ben.getByTestId('conflicts-resolved').textContent()).toBe(String(before + 1));
  }, 60_000);

  it('lets the user settle a conflict by hand, and the other device gets the result and hears what it lost', async () => {
    await ben.getByTestId('strategy').selectOption('manual');
    await ben.getByTestId('offline-switch').check();
    await rename(alice, 0, 'For the crew: bring boots');
    await waitForTitles(bob, ['For the crew: bring boots', 'Check the pump before noon']);
    await rename(ben, 0, 'For the crew: bring gloves');
    await ben.getByTestId('offline-switch').uncheck();

    const card = ben.getByTestId('conflict');
    await card.waitFor({ state: 'visible', timeout: 15_000 });
    await expect.poll(() => card.getByTestId('version-mine').textContent(), { timeout: 15_000 }).toContain('For the crew: bring gloves');
    await expect.poll(() => card.getByTestId('version-theirs').textContent(), { timeout: 15_000 }).toContain('For the crew: bring boots');
    await expect.poll(() => ben.getByTestId('conflicts-open').textContent()).toBe('1');
    await shot(ben, 'e2e-conflict');

    await card.getByTestId('edit-merged').click();
    await card.getByTestId('merged-title').fill('For the crew: bring boots and gloves');
    await card.getByTestId('save-merged').click();
    await card.waitFor({ state: 'hidden', timeout: 15_000 });
    await waitForTitles(alice, ['For the crew: bring boots and gloves', 'Check the pump before noon']);
    await waitForTitles(bob, ['For the crew: bring boots and gloves', 'Check the pump before noon']);
    await expect.poll(() => ben.getByTestId('conflicts-open').textContent()).toBe('0');
    // Ana's rename was replaced: her device (the one that made it) says so on the todo and in the log.
    await expect.poll(() => row(alice, 'For the crew: bring boots and gloves').getByTestId('notice').textContent(), { timeout: 15_000 }).toContain('renaming it to "For the crew: bring boots"');
    await row(bob, 'For the crew: bring boots and gloves').getByTestId('notice').waitFor({ state: 'hidden', timeout: 15_000 });
    await expect.poll(() => ben.locator('#log').textContent()).toContain('Your change was discarded: renaming it to "For the crew: bring gloves"');
    await shot(alice, 'e2e-notice');
    await shot(ben, 'e2e-settled');
  }, 60_000);

  it('opens from its cache with no network at all, and keeps working', async () => {
    // The service worker has cached the app shell since the first visit.
    await alice.evaluate(() => navigator.serviceWorker.ready.then(() => undefined));
    await alice.context().setOffline(true);
    await load(alice);
    await expect.poll(() => connection(alice).getAttribute('data-state'), { timeout: 15_000 }).not.toBe('online');
    expect(await titles(alice)).toEqual(['For the crew: bring boots and gloves', 'Check the pump before noon']);

    await add(alice, 'Written with no network');
    await row(alice, 'Written with no network').getByTestId('unsynced').waitFor({ state: 'visible', timeout: 15_000 });
    await shot(alice, 'e2e-offline');
    await alice.context().setOffline(false);
    await row(alice, 'Written with no network').getByTestId('unsynced').waitFor({ state: 'hidden', timeout: 30_000 });
    await waitForTitles(ben, ['For the crew: bring boots and gloves', 'Check the pump before noon', 'Written with no network']);
  }, 90_000);

  it('sends a photo taken on one device to the other, with its upload shown', async () => {
    // A real PNG: a picture of the app itself.
    const picture = await ben.screenshot({ clip: { x: 0, y: 0, width: 320, height: 200 } });
    await row(alice, 'Check the pump before noon').getByTestId('photo-input').setInputFiles({ name: 'pump.png', mimeType: 'image/png', buffer: picture });
    await expect.poll(() => alice.locator('#log').textContent(), { timeout: 30_000 }).toContain('Photo for "Check the pump before noon" is on the server.');
    const photoOf = (page: Page) => row(page, 'Check the pump before noon').getByTestId('photo');
    await photoOf(ben).waitFor({ state: 'visible', timeout: 30_000 });
    await expect.poll(() => photoOf(ben).evaluate((image) => (image as HTMLImageElement).naturalWidth), { timeout: 15_000 }).toBe(320);
    await photoOf(bob).waitFor({ state: 'visible', timeout: 30_000 });
    await shot(ben, 'e2e-photo');
    // The README's picture of the app: taken again only when asked, so that a test run leaves the tree as it was.
    if (process.env.UPDATE_DOCS_SCREENSHOT === '1') await ben.screenshot({ path: join(import.meta.dirname, '..', 'docs', 'example-app.png') });
  }, 90_000);

  it('renews a short sign-in before it runs out, without dropping the connection', async () => {
    // Tokens of 6 s: the plugin asks its authToken function for a fresh one before each session ends.
    const auth = createDemoAuth({ tokenLifetimeMs: 6000 });
    let logins = 0;
    const shortLived = await serve({
      port: 0,
      host: '127.0.0.1',
      storage: { kind: 'memory' },
      logLevel: 'silent',
      staticDir: outDir,
      authenticate: auth.authenticate,
      authorize: auth.authorize,
      handleRequest: (req, res) => {
        if (req.url === '/demo/login') logins++;
        return auth.handleRequest(req, res);
      },
    });
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${shortLived.url}/?user=ben`);
      await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
      await expect.poll(() => connection(page).getAttribute('data-state'), { timeout: 15_000 }).toBe('online');
      await page.evaluate(() => {
        const { sync } = (window as unknown as { todoApp: { sync: { status$: { subscribe(next: (status: { connected: boolean }) => void): void } } } }).todoApp;
        sync.status$.subscribe((status) => {
          if (!status.connected) document.body.dataset.dropped = 'true';
        });
      });
      // Three sign-ins: the first, and two renewals, each past the end of the session before it.
      await expect.poll(() => logins, { timeout: 30_000, interval: 250 }).toBeGreaterThanOrEqual(3);
      expect(await page.evaluate(() => document.body.dataset.dropped)).toBeUndefined();
      await add(page, 'Still signed in');
      await expect.poll(() => page.getByTestId('pending').textContent(), { timeout: 15_000 }).toBe('0');
    } finally {
      await context.close();
      await shortLived.close();
    }
  }, 60_000);
});
