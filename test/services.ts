/**
 * The real PostgreSQL and Redis servers the tests run against. A missing
 * service skips its suites on a developer machine, and fails the run in CI
 * (REQUIRE_SERVICES=1) so a broken CI setup never passes by skipping.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';

export const POSTGRES = { host: '127.0.0.1', port: 5432, user: 'postgres', adminDatabase: 'postgres' } as const;
export const REDIS = { host: '127.0.0.1', port: 6379, url: 'redis://127.0.0.1:6379' } as const;

type Service = 'postgres' | 'redis';
const ENDPOINTS: Record<Service, { name: string; host: string; port: number }> = {
  postgres: { name: 'PostgreSQL', host: POSTGRES.host, port: POSTGRES.port },
  redis: { name: 'Redis', host: REDIS.host, port: REDIS.port },
};

/** True when something accepts TCP connections on host:port within `timeoutMs`. */
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

export const postgresAvailable = () => portOpen(POSTGRES.host, POSTGRES.port);
export const redisAvailable = () => portOpen(REDIS.host, REDIS.port);

/**
 * Whether the suites needing `service` should run. Use at the top level of a
 * test file: `describe.skipIf(!(await serviceReady('postgres')))(...)`.
 * Throws when the service is missing and REQUIRE_SERVICES=1.
 */
export async function serviceReady(service: Service): Promise<boolean> {
  const { name, host, port } = ENDPOINTS[service];
  if (await portOpen(host, port)) return true;
  const why = `${name} is not reachable on ${host}:${port}`;
  if (process.env.REQUIRE_SERVICES === '1') {
    throw new Error(`${why}, and REQUIRE_SERVICES=1 requires it: start ${name} before running the tests`);
  }
  console.warn(`[skipped] the ${name} suites: ${why} (set REQUIRE_SERVICES=1 to make this an error)`);
  return false;
}

function adminConnectionString(database: string = POSTGRES.adminDatabase): string {
  return `postgres://${POSTGRES.user}@${POSTGRES.host}:${POSTGRES.port}/${database}`;
}

export interface TestDatabase {
  name: string;
  connectionString: string;
  /** Drops the database, disconnecting anyone still connected. */
  drop(): Promise<void>;
}

/** A fresh, empty PostgreSQL database for one test run; call drop() in afterAll. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `rxos_test_${randomBytes(6).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  return {
    name,
    connectionString: adminConnectionString(name),
    drop: () => adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

/**
 * For a describe block: a fresh PostgreSQL database created before its tests
 * and dropped after them, and a fresh schema name in it on each call of
 * `freshSchema` (tests then share the server, never state).
 */
export function useTestDatabase(): { readonly connectionString: string; freshSchema(prefix: string): string } {
  let database: TestDatabase | undefined;
  let schemas = 0;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database?.drop();
  });
  return {
    get connectionString() {
      if (!database) throw new Error('the test database is created in beforeAll');
      return database.connectionString;
    },
    freshSchema: (prefix) => `${prefix}_${++schemas}`,
  };
}

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminConnectionString() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
