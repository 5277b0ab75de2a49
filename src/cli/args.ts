/** Parsers for the command line's values; each throws an InvalidArgumentError that names what it expected. */
import { availableParallelism } from 'node:os';
import { InvalidArgumentError } from 'commander';

export type StorageSpec =
  | { kind: 'memory' }
  | { kind: 'sqlite'; path: string }
  | { kind: 'postgres'; connectionString: string };

export function parsePort(value: string): number {
  const port = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new InvalidArgumentError(`expected a port number from 0 to 65535, got "${value}".`);
  }
  return port;
}

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30 };

/** A size in bytes: a whole number, optionally with a unit (KB, MB, GB; KiB, MiB, GiB), e.g. `50MiB`. */
export function parseBytes(value: string): number {
  const match = /^(\d+)\s*([a-z]*)$/i.exec(value.trim());
  const unit = match ? SIZE_UNITS[match[2]!.toUpperCase()] : undefined;
  const bytes = match && unit !== undefined ? Number(match[1]) * unit : Number.NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 1) {
    throw new InvalidArgumentError(`expected a whole number of bytes, at least 1, optionally with a unit (KB, MB, GB, KiB, MiB, GiB), such as 50MiB, 200MB or 1048576, got "${value}".`);
  }
  return bytes;
}

/** A count of server processes, or `auto` for one per core. */
export function parseWorkers(value: string): number {
  if (value === 'auto') return availableParallelism();
  const workers = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
    throw new InvalidArgumentError(`expected a number of processes from 1 to 256, or "auto" (one per core), got "${value}".`);
  }
  return workers;
}

export function parseStorage(value: string): StorageSpec {
  if (value === 'memory') return { kind: 'memory' };
  if (value.startsWith('sqlite:')) {
    const path = value.slice('sqlite:'.length);
    if (!path) throw new InvalidArgumentError('expected a file after "sqlite:", e.g. sqlite:./data/sync.db.');
    return { kind: 'sqlite', path };
  }
  if (/^postgres(ql)?:\/\//.test(value)) {
    try {
      new URL(value);
    } catch {
      throw new InvalidArgumentError(`"${value}" is not a valid PostgreSQL URL, e.g. postgres://user:password@localhost:5432/sync.`);
    }
    return { kind: 'postgres', connectionString: value };
  }
  throw new InvalidArgumentError(`expected memory, sqlite:PATH or postgres://..., got "${value}".`);
}

export function parseRedisUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`expected a Redis URL such as redis://localhost:6379, got "${value}".`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    throw new InvalidArgumentError(`expected a redis:// or rediss:// URL, got "${value}".`);
  }
  return value;
}

/** `*` for any origin, or a comma-separated list of origins. */
export function parseCorsOrigin(value: string): string | string[] {
  if (value === '*') return value;
  const origins = value.split(',').map((origin) => origin.trim()).filter(Boolean);
  for (const origin of origins) {
    let url: URL | undefined;
    try {
      url = new URL(origin);
    } catch {
      // reported below
    }
    if (!url || url.origin !== origin.replace(/\/$/, '')) {
      throw new InvalidArgumentError(`expected "*" or origins such as http://localhost:5173, got "${origin}".`);
    }
  }
  return origins;
}

/** Where a storage lives, for the startup message (without a password). */
export function describeStorage(spec: StorageSpec): string {
  if (spec.kind === 'memory') return 'memory (nothing survives a restart)';
  if (spec.kind === 'sqlite') return `SQLite ${spec.path}`;
  const url = new URL(spec.connectionString);
  if (url.password) url.password = '***';
  return `PostgreSQL ${url.toString()}`;
}
