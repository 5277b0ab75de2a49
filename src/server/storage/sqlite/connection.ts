import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type Database from 'better-sqlite3';
import { SyncError } from '../../../shared/errors.js';
import { SCHEMA } from './schema.js';

/** Opens the database file (its directory made when missing) and creates the tables; throws what the driver threw. */
export function openDatabase(driver: typeof Database, path: string, mmapBytes: number): Database.Database {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new driver(path);
  // First: the workers of `serve --workers` open the file at once, and each waits its turn for the lock.
  db.pragma('busy_timeout = 5000');
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL'); // an acknowledged push survives a power cut, not just a crash
  // Pages read through a map, not a read call each: the 50,000 heads of a 5 % scope lie on as many pages of a
  // 1,000,000-document file, and its first sync's reads took 500 ms that way against 360 ms mapped.
  db.pragma(`mmap_size = ${mmapBytes}`);
  db.exec(SCHEMA);
  return db;
}

/** A driver's error as the STORAGE_ERROR a caller sees, `what` saying what could not be done. */
export function storageError(what: string, error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError('STORAGE_ERROR', `${what}: ${error instanceof Error ? error.message : String(error)}`);
}
