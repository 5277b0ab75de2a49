/**
 * The options and the pool every PostgreSQL part of the server shares (the
 * sync storage, the blob store): one database, given as a connection string
 * (the part creates and closes its pool) or as a pool the app owns.
 */
import type pg from 'pg';
import { z } from 'zod';
import { requireOptional } from '../../optional.js';

/** How long a new pool connection may take before the call that needed it fails. */
const CONNECT_TIMEOUT_MS = 10_000;

const identifier = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,39}$/, 'letters, digits and _, starting with a letter or _');

/** How a PostgreSQL part of the server is given its database. */
export interface PostgresOptions {
  connectionString?: string;
  /** A pool you own: it is used as is and left open by close(). */
  pool?: pg.Pool;
  /** Size of the pool created from connectionString (default 10). */
  poolSize?: number;
  /** Default public. */
  schema?: string;
  /** Prepended to the table names, so the sync tables never collide with an app's own (default sync_). */
  tablePrefix?: string;
  /** Errors of idle pooled connections (the server restarted, the network dropped); the pool replaces them. */
  onError?: (error: Error) => void;
}

type ParsedPostgresOptions = PostgresOptions & { poolSize: number; schema: string; tablePrefix: string };

// Typed by hand: a declaration inferred from the schema names zod's and pg's internals, which the type build cannot bundle.
export const postgresOptionsSchema: z.ZodType<ParsedPostgresOptions, PostgresOptions> = z
  .strictObject({
    connectionString: z.string().min(1).optional(),
    /** A pool you own: it is used as is and left open by close(). */
    pool: z
      .custom<pg.Pool>((value) => !!value && typeof (value as pg.Pool).connect === 'function', 'pool must be a pg.Pool')
      .optional(),
    /** Size of the pool created from connectionString. */
    poolSize: z.number().int().positive().default(10),
    schema: identifier.default('public'),
    /** Prepended to the table names, so the sync tables never collide with an app's own. */
    tablePrefix: identifier.or(z.literal('')).default('sync_'),
    /** Errors of idle pooled connections (the server restarted, the network dropped); the pool replaces them. */
    onError: z.custom<(error: Error) => void>((value) => typeof value === 'function', 'onError must be a function').optional(),
  })
  .refine((o) => (o.connectionString === undefined) !== (o.pool === undefined), {
    message: 'give exactly one of connectionString and pool',
    path: ['connectionString'],
  });

/** The app's pool, or a new one from the connection string (then `owned`: closed by its user). */
export function openPool(parsed: ParsedPostgresOptions, neededBy: string): { pool: pg.Pool; owned: boolean } {
  if (parsed.pool) return { pool: parsed.pool, owned: false };
  // pg is an optional peer dependency, needed only when a pool is created here.
  const pool = new (requireOptional<typeof pg>('pg', neededBy).Pool)({
    connectionString: parsed.connectionString,
    max: parsed.poolSize,
    application_name: 'rxdb-offline-sync',
    // A server that accepts the connection but never answers fails the call instead of hanging it (and start()).
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  pool.on('error', parsed.onError ?? ((error: Error) => console.error('rxdb-offline-sync: idle PostgreSQL connection failed:', error.message)));
  return { pool, owned: true };
}
