/**
 * The package as an app gets it: built, packed and installed from the
 * tarball into an empty folder, with npm as a user runs it.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { build, type Options } from 'tsup';
import { build as viteBuild } from 'vite';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import tsupConfig from '../tsup.config.js';
import { MemorySyncStorage, SyncError, type SyncStorage } from '../src/server/index.js';
import { createLogger } from '../src/shared/logger.js';
import { runStorageConformance } from '../src/testing/index.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta: Record<string, { optional?: boolean }>;
};
/** The versions this checkout installed, which npm's cache holds. */
const installed = (name: string) => `${name}@${(JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version}`;
/** npm as a user runs it: without the npm_* variables that `npx vitest` leaves behind (one names this checkout as the prefix). */
const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.toLowerCase().startsWith('npm_')));
const npm = (cwd: string, ...args: string[]) => run('npm', args, { cwd, env, timeout: 120_000, maxBuffer: 16 << 20 });
const INSTALL = ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'];

/** What only a server needs; none of it may reach a browser app. */
const SERVER_PACKAGES = ['better-sqlite3', 'pg', 'redis', '@redis/client', 'socket.io', 'socket.io-adapter', '@socket.io/redis-adapter', '@socket.io/cluster-adapter', '@socket.io/sticky', 'prom-client', 'pino', 'commander'];

/** Every module specifier a built file imports or requires (tsup starts each import statement on a line of its own). */
function specifiers(code: string): string[] {
  const found = code.matchAll(/^\s*(?:import|export)\s[^'"]*?\bfrom\s*["']([^"'\n]+)["']|^\s*import\s*["']([^"'\n]+)["']|\bimport\(\s*["']([^"'\n]+)["']\s*\)|\brequire\(\s*["']([^"'\n]+)["']\s*\)/gm);
  return [...found].map((match) => match[1] ?? match[2] ?? match[3] ?? match[4]!);
}

interface LockedPackage {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

/**
 * Every package installed because `name` depends on it, directly or not, by
 * the install's own record (node_modules/.package-lock.json). Peers are the
 * app's, not the package's: rxdb brings what it brings to any RxDB app.
 */
function installedFor(app: string, name: string): Set<string> {
  const { packages } = JSON.parse(readFileSync(join(app, 'node_modules', '.package-lock.json'), 'utf8')) as { packages: Record<string, LockedPackage> };
  /** Where Node finds `dependency` from the package at `from`: its own node_modules, then each parent's. */
  const locate = (from: string, dependency: string): string | undefined => {
    for (let base = from; ; base = base.slice(0, Math.max(0, base.lastIndexOf('/node_modules/')))) {
      const path = `${base ? `${base}/` : ''}node_modules/${dependency}`;
      if (packages[path]) return path;
      if (!base) return undefined;
    }
  };
  const names = new Set<string>();
  const seen = new Set<string>();
  const visit = (path: string) => {
    if (seen.has(path)) return;
    seen.add(path);
    const { dependencies = {}, optionalDependencies = {} } = packages[path]!;
    for (const dependency of Object.keys({ ...dependencies, ...optionalDependencies })) {
      const found = locate(path, dependency);
      if (!found) continue; // an optional dependency for another platform
      names.add(dependency);
      visit(found);
    }
  };
  visit(`node_modules/${name}`);
  return names;
}

/** The bare specifiers of a built entry and every chunk it reaches. */
function externalImports(entry: string): Set<string> {
  const external = new Set<string>();
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const specifier of specifiers(readFileSync(file, 'utf8'))) {
      if (specifier.startsWith('.')) visit(join(dirname(file), specifier));
      else external.add(specifier);
    }
  };
  visit(entry);
  return external;
}

const packageName = (specifier: string) => specifier.split('/').slice(0, specifier.startsWith('@') ? 2 : 1).join('/');

/** Runs an ES module in the app folder and gives back what it printed as JSON. */
async function runInApp(app: string, name: string, code: string): Promise<Record<string, unknown>> {
  writeFileSync(join(app, name), code);
  const { stdout } = await run(process.execPath, [name], { cwd: app, env, timeout: 30_000 });
  return JSON.parse(stdout) as Record<string, unknown>;
}

describe('the packed package', () => {
  const work = mkdtempSync(join(tmpdir(), 'rxos-package-'));
  const dist = join(work, 'package', 'dist');
  const app = join(work, 'app');

  beforeAll(async () => {
    // The same entries as `npm run build`, JavaScript only (the install does not read types), into a folder of its own.
    const configs = tsupConfig as Options[];
    for (const config of configs) await build({ ...config, config: false, outDir: dist, dts: false, sourcemap: false, clean: false, silent: true });
    for (const file of ['package.json', 'README.md']) copyFileSync(join(root, file), join(work, 'package', file));
    const { stdout } = await npm(join(work, 'package'), 'pack', '--json', '--pack-destination', work);
    const [{ filename }] = JSON.parse(stdout) as [{ filename: string }];

    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
    await npm(app, ...INSTALL, join(work, filename), installed('rxdb'), installed('rxjs'));
  }, 180_000);

  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('keeps every server library and native module out of `npm i rxdb-offline-sync rxdb rxjs`', async () => {
    const modules = join(app, 'node_modules');
    expect(existsSync(join(modules, 'rxdb-offline-sync', 'dist', 'index.js'))).toBe(true);
    const ours = installedFor(app, 'rxdb-offline-sync');
    expect(SERVER_PACKAGES.filter((name) => ours.has(name))).toEqual([]);

    const native: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        if (entry.isDirectory()) walk(join(dir, entry.name));
        else if (entry.name === 'binding.gyp' || entry.name.endsWith('.node')) native.push(join(dir, entry.name));
      }
    };
    walk(modules);
    expect(native).toEqual([]);

    // rxdb and rxjs are the app's own: one copy each, the app's.
    expect(['rxdb', 'rxjs'].filter((name) => ours.has(name) || existsSync(join(modules, 'rxdb-offline-sync', 'node_modules', name)))).toEqual([]);
  });

  it('loads the client from ESM and CommonJS, and the protocol; the server entry names the package it is missing', async () => {
    const result = await runInApp(
      app,
      'client.mjs',
      `import { createRequire } from 'node:module';
      const client = await import('rxdb-offline-sync');
      const cjs = createRequire(import.meta.url)('rxdb-offline-sync');
      const protocol = await import('rxdb-offline-sync/protocol');
      const server = await import('rxdb-offline-sync/server').then(() => 'loaded', (error) => error.message);
      console.log(JSON.stringify({ esm: typeof client.createSyncPlugin, cjs: typeof cjs.createSyncPlugin, plugin: client.RxDBOfflineSyncPlugin.name, protocol: typeof protocol.toPushRows, server }));`,
    );
    expect(result).toMatchObject({ esm: 'function', cjs: 'function', plugin: 'rxdb-offline-sync', protocol: 'function' });
    expect(result.server).toMatch(/Cannot find (package|module) '(socket\.io|socket\.io-adapter|pino)'/);
  });

  it('serves with socket.io and pino added; a storage or metrics whose package is missing names it', async () => {
    await npm(app, ...INSTALL, installed('socket.io'), installed('pino'));
    const result = await runInApp(
      app,
      'server.mjs',
      `import { createServer } from 'node:http';
      import { MemorySyncStorage, PostgresSyncStorage, SqliteSyncStorage, createSyncMetrics, createSyncServer } from 'rxdb-offline-sync/server';
      const message = (make) => { try { make(); return 'created'; } catch (error) { return error.message; } };
      const syncServer = createSyncServer({ httpServer: createServer(), storage: new MemorySyncStorage(), logging: { enabled: false } });
      await syncServer.start();
      const result = {
        started: syncServer.getClientsCount(),
        sqlite: message(() => new SqliteSyncStorage({ path: ':memory:' })),
        postgres: message(() => new PostgresSyncStorage({ connectionString: 'postgres://localhost/none' })),
        metrics: message(() => createSyncMetrics(syncServer)),
      };
      await syncServer.stop();
      console.log(JSON.stringify(result));`,
    );
    expect(result).toEqual({
      started: 0,
      sqlite: 'SqliteSyncStorage needs the package better-sqlite3: npm i better-sqlite3',
      postgres: 'PostgresSyncStorage needs the package pg: npm i pg',
      metrics: 'createSyncMetrics needs the package prom-client: npm i prom-client',
    });
  });

  it('bundles into a browser app with Vite, and no Node built-in comes along', async () => {
    const web = join(app, 'web');
    mkdirSync(web);
    writeFileSync(join(web, 'index.html'), '<script type="module" src="./main.js"></script>');
    writeFileSync(
      join(web, 'main.js'),
      `import { addRxPlugin } from 'rxdb';
      import { RxDBOfflineSyncPlugin, createSyncPlugin } from 'rxdb-offline-sync';
      addRxPlugin(RxDBOfflineSyncPlugin);
      window.sync = createSyncPlugin;`,
    );
    const builtins: string[] = [];
    const warnings: string[] = [];
    const output = await viteBuild({
      root: web,
      configFile: false,
      logLevel: 'silent',
      build: { write: false, rollupOptions: { onwarn: (warning) => void warnings.push(warning.message) } },
      plugins: [{ name: 'builtins', enforce: 'pre', resolveId: (id) => void (isBuiltin(id) && builtins.push(id)) }],
    });
    const chunks = (Array.isArray(output) ? output : [output]).flatMap((result) => ('output' in result ? result.output : [])).flatMap((file) => (file.type === 'chunk' ? [file] : []));
    const code = chunks.map((chunk) => chunk.code).join('\n');
    const bundled = new Set(chunks.flatMap((chunk) => chunk.moduleIds).flatMap((id) => (id.includes('/node_modules/') ? [packageName(id.slice(id.lastIndexOf('/node_modules/') + 14))] : [])));
    expect(bundled).toContain('rxdb-offline-sync');
    expect(SERVER_PACKAGES.filter((name) => bundled.has(name))).toEqual([]);
    expect(builtins).toEqual([]);
    expect(warnings.filter((warning) => /externalized for browser compatibility/.test(warning))).toEqual([]);
    expect(code).not.toContain('__vite-browser-external');
  });

  it('builds a client that imports no Node built-in and nothing but its dependencies and rxdb', () => {
    const allowed = new Set([...Object.keys(manifest.dependencies), ...Object.keys(manifest.peerDependencies).filter((name) => !manifest.peerDependenciesMeta[name]?.optional)]);
    for (const entry of ['index.js', 'index.cjs']) {
      const imports = [...externalImports(join(dist, entry))];
      expect(imports.filter((specifier) => isBuiltin(specifier)), entry).toEqual([]);
      expect(imports.filter((specifier) => SERVER_PACKAGES.includes(packageName(specifier))), entry).toEqual([]);
      expect(imports.filter((specifier) => !allowed.has(packageName(specifier))), entry).toEqual([]);
      expect(imports.map(packageName), entry).toContain('rxdb');
    }
    // The check sees what it looks for: the server's build imports Node built-ins and its optional packages.
    const server = [...externalImports(join(dist, 'server.js'))];
    expect(server.filter((specifier) => isBuiltin(specifier)).length).toBeGreaterThan(0);
    expect(server).toContain('socket.io');
  });
});

describe('the client logger', () => {
  it('logs through console, no library: at its level and above, with its fields and a child\'s bindings', () => {
    const calls: unknown[][] = [];
    const spies = (['error', 'warn', 'info', 'debug'] as const).map((method) => vi.spyOn(console, method).mockImplementation((...args: unknown[]) => void calls.push([method, ...args])));
    try {
      const logger = createLogger({ enabled: true, level: 'info' }, 'rxdb-offline-sync:client');
      logger.debug('not at this level');
      logger.info('connected');
      logger.child({ collection: 'todos' }).warn({ pending: 3 }, 'push failed');
      logger.fatal('gave up');
      createLogger({ enabled: false, level: 'trace' }, 'off').error('never');
      expect(calls).toEqual([
        ['info', '[rxdb-offline-sync:client] connected'],
        ['warn', '[rxdb-offline-sync:client] push failed', { collection: 'todos', pending: 3 }],
        ['error', '[rxdb-offline-sync:client] gave up'],
      ]);
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
  });
});

/**
 * A storage as its author writes one outside this package, run through the
 * suite that ./testing ships. Its data outlives its instances, so the suite
 * also closes and reopens it; it gives no cleanup, so the suite closes it.
 */
class ReopenableMemoryStorage implements SyncStorage {
  private closed = false;

  constructor(private readonly data: MemorySyncStorage) {}

  private open(): MemorySyncStorage {
    if (this.closed) throw new SyncError('STORAGE_ERROR', 'this storage instance is closed');
    return this.data;
  }

  init = () => this.open().init();
  saveEvents: SyncStorage['saveEvents'] = (events) => this.open().saveEvents(events);
  getEventsAfter: SyncStorage['getEventsAfter'] = (checkpoint, options) => this.open().getEventsAfter(checkpoint, options);
  getChangesAfter: SyncStorage['getChangesAfter'] = (checkpoint, options) => this.open().getChangesAfter(checkpoint, options);
  getScopedChanges: SyncStorage['getScopedChanges'] = (checkpoint, query) => this.open().getScopedChanges(checkpoint, query);
  indexScopeFields: SyncStorage['indexScopeFields'] = (fields) => this.open().indexScopeFields(fields);
  clearEventsBefore: SyncStorage['clearEventsBefore'] = (checkpoint) => this.open().clearEventsBefore(checkpoint);
  getHeads: SyncStorage['getHeads'] = (collection, documentIds) => this.open().getHeads(collection, documentIds);
  getLatestSequence = () => this.open().getLatestSequence();
  countEvents = () => this.open().countEvents();
  claimClient: SyncStorage['claimClient'] = (clientId, userKey) => this.open().claimClient(clientId, userKey);
  close = async () => {
    this.closed = true;
  };
}

runStorageConformance('a storage its author defines', () => {
  const data = new MemorySyncStorage();
  return { storage: new ReopenableMemoryStorage(data), reopen: async () => new ReopenableMemoryStorage(data) };
});
