import type pg from 'pg';
import { SyncError } from '../../../shared/errors.js';

/** A pooled connection and how to give it back: `release(error)` discards it instead. */
export interface CheckedOut {
  client: pg.PoolClient;
  release(error?: Error): void;
}

/**
 * A pooled connection for a transaction. The pool stops listening for its
 * errors while it is checked out, so one the server sends then (the
 * connection killed, say) would be an uncaught exception that ends the
 * process: it is recorded instead, and the connection discarded on release.
 */
export async function checkout(pool: pg.Pool): Promise<CheckedOut> {
  const client = await pool.connect();
  let lost: Error | undefined;
  const onError = (error: Error) => {
    lost ??= error;
  };
  client.on('error', onError);
  return {
    client,
    release: (error?: Error) => {
      client.off('error', onError);
      client.release(error ?? lost);
    },
  };
}

/** Runs `work` in one transaction on a pooled connection; `what` names it in the error. */
export async function inTransaction<T>(pool: pg.Pool, what: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  let checkedOut: CheckedOut;
  try {
    checkedOut = await checkout(pool);
  } catch (error) {
    throw storageError(`cannot ${what}`, error);
  }
  const { client } = checkedOut;
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    // A connection that cannot even roll back is discarded rather than returned to the pool.
    await client.query('ROLLBACK').catch((rollbackError: Error) => (broken = rollbackError));
    throw storageError(`cannot ${what}`, error);
  } finally {
    checkedOut.release(broken);
  }
}

export function storageError(what: string, error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError('STORAGE_ERROR', `${what}: ${error instanceof Error ? error.message : String(error)}`);
}
