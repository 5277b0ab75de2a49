/**
 * Server storages for the throughput scenario. SQLite and PostgreSQL are
 * loaded on demand: when their module is missing, or PostgreSQL is not
 * running, that variant is skipped with a note instead of failing the run.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { SyncStorage } from 'rxdb-offline-sync/server';

export interface StorageVariant {
  name: 'memory' | 'sqlite' | 'postgres';
  /** A fresh, empty storage for one run; undefined means the server's default (memory). */
  create(run: number): Promise<{ storage?: SyncStorage; dispose(): Promise<void> }>;
  /** Removes everything the variant made (files, databases). */
  finish(): Promise<void>;
}

const POSTGRES = { host: '127.0.0.1', port: 5432, user: 'postgres' };

export async function storageVariants(log: (message: string) => void): Promise<StorageVariant[]> {
  const variants: StorageVariant[] = [
    { name: 'memory', create: async () => ({ dispose: async () => {} }), finish: async () => {} },
  ];
  const sqlite = await sqliteVariant().catch((error: unknown) => skip('SQLite', error, log));
  if (sqlite) variants.push(sqlite);
  const postgres = await postgresVariant().catch((error: unknown) => skip('PostgreSQL', error, log));
  if (postgres) variants.push(postgres);
  return variants;
}

function skip(name: string, error: unknown, log: (message: string) => void): undefined {
  log(`note: skipping the ${name} throughput scenario: ${error instanceof Error ? error.message : String(error)}`);
  return undefined;
}

async function sqliteVariant(): Promise<StorageVariant> {
  const { SqliteSyncStorage } = await import('rxdb-offline-sync/server');
  const directory = mkdtempSync(join(tmpdir(), 'rxos-bench-'));
  return {
    name: 'sqlite',
    async create(run) {
      const path = join(directory, `run${run}.db`);
      const storage = new SqliteSyncStorage({ path });
      return {
        storage,
        async dispose() {
          await storage.close();
          for (const suffix of ['', '-wal', '-shm']) rmSync(`${path}${suffix}`, { force: true });
        },
      };
    },
    finish: async () => rmSync(directory, { recursive: true, force: true }),
  };
}

async function postgresVariant(): Promise<StorageVariant> {
  const { PostgresSyncStorage } = await import('rxdb-offline-sync/server');
  if (!(await portOpen(POSTGRES.host, POSTGRES.port))) throw new Error(`nothing listens on ${POSTGRES.host}:${POSTGRES.port}`);
  const database = `rxos_bench_${randomBytes(5).toString('hex')}`;
  const url = (name: string) => `postgres://${POSTGRES.user}@${POSTGRES.host}:${POSTGRES.port}/${name}`;
  await adminQuery(url('postgres'), `CREATE DATABASE ${database}`);
  return {
    name: 'postgres',
    async create(run) {
      const storage = new PostgresSyncStorage({ connectionString: url(database), tablePrefix: `run${run}_` });
      return { storage, dispose: () => storage.close() };
    },
    finish: () => adminQuery(url('postgres'), `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`),
  };
}

async function adminQuery(connectionString: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Whether something accepts TCP connections on host:port within `timeoutMs`. */
export function portOpen(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
