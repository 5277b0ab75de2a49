/**
 * What a pushed event must be besides well formed: a document its
 * collection's schema allows, and a clock that is not from the future.
 * Either, let through, would reach every client: a document a validating
 * RxDB storage refuses fails every later sync of those clients, and a clock
 * far ahead wins every last-write-wins conflict until real time catches up.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { z } from 'zod';
import { SyncError } from '../shared/errors.js';
import { millisOf } from '../shared/hlc.js';
import type { SyncEvent } from '../shared/protocol/index.js';

/**
 * The default of `maxClockDrift`: the bound within which clients merge a
 * remote clock into their own (hlc.ts), so every clock the server accepts
 * is one a later writer's clock moves past. It still lets in a device
 * whose user set its local time in a wrong time zone (at most 14 hours off)
 * and that edited offline for days.
 */
export const DEFAULT_MAX_CLOCK_DRIFT = 24 * 60 * 60 * 1000;

/** Keywords RxDB adds to JSON Schema (RxDB's own ajv validator declares the same ones), and annotations apps write. */
const RXDB_KEYWORDS = ['version', 'primaryKey', 'indexes', 'encrypted', 'keyCompression', 'attachments', 'final', 'ref', 'crdt', 'internalIndexes', 'sharding', 'example'];

/**
 * RxDB's bookkeeping fields. The plugin never pushes them (they are stripped
 * before a change is logged) but another client might: allowed, never required.
 */
const RXDB_FIELDS = ['_deleted', '_rev', '_meta', '_attachments'];

export type DocumentValidators = ReadonlyMap<string, ValidateFunction>;

// ajv-formats is CommonJS: its plugin is the module itself under Node, `default` under bundlers that wrap it.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (ajv: Ajv) => Ajv;

/**
 * The app's RxDB schema as RxDB itself validates a document with it, less
 * its bookkeeping fields: no other top-level field (RxDB always sets
 * additionalProperties to false), the primary key required, required paths
 * into nested objects dropped (RxDB drops them too).
 */
function documentSchema(schema: Record<string, unknown>): Record<string, unknown> {
  const primaryKey = schema.primaryKey as string | { key?: unknown } | undefined;
  const primary = typeof primaryKey === 'string' ? primaryKey : typeof primaryKey?.key === 'string' ? primaryKey.key : undefined;
  const required = Array.isArray(schema.required) ? (schema.required as unknown[]) : [];
  const properties = schema.properties && typeof schema.properties === 'object' ? (schema.properties as Record<string, unknown>) : {};
  return {
    ...schema,
    additionalProperties: false,
    properties: { ...properties, ...Object.fromEntries(RXDB_FIELDS.map((field) => [field, {}])) },
    required: [...new Set([...required, ...(primary ? [primary] : [])])].filter(
      (field) => typeof field !== 'string' || (!field.includes('.') && !RXDB_FIELDS.includes(field)),
    ),
  };
}

/**
 * Compiles the `schemas` option once, at the server's construction; a schema
 * ajv cannot compile (strict mode, as RxDB's validator) is an issue on
 * `schemas.<collection>`, which the option check turns into INVALID_OPTION.
 */
export function compileSchemas(schemas: Record<string, Record<string, unknown>>, ctx: z.core.$RefinementCtx<unknown>): DocumentValidators {
  // Strict as RxDB's validator, so a typo in a keyword fails here rather than being ignored; union types are JSON Schema RxDB accepts.
  const ajv = addFormats(new Ajv({ strict: true, allowUnionTypes: true, logger: false }));
  for (const keyword of RXDB_KEYWORDS) ajv.addKeyword(keyword);
  const validators = new Map<string, ValidateFunction>();
  for (const [collection, schema] of Object.entries(schemas)) {
    try {
      validators.set(collection, ajv.compile(documentSchema(schema)));
    } catch (error) {
      ctx.issues.push({ code: 'custom', message: `not a usable RxDB JSON schema: ${SyncError.from(error).message}`, input: schema, path: [collection] });
    }
  }
  return validators;
}

/** The first thing wrong, as "/title must be string". */
function describe(error: ErrorObject): string {
  const extra = error.keyword === 'additionalProperties' ? ` (${String(error.params.additionalProperty)})` : '';
  return `${error.instancePath || '/'} ${error.message ?? `fails ${error.keyword}`}${extra}`;
}

/** Refuses an insert or update whose document (as it would be stored) its collection's schema does not allow; deletes are not checked. */
export function assertMatchesSchema(validators: DocumentValidators, event: SyncEvent): void {
  if (event.op === 'delete') return;
  const validate = validators.get(event.collection);
  if (!validate || validate(event.data)) return;
  const first = validate.errors![0]!;
  throw new SyncError('SCHEMA_VIOLATION', `document ${event.collection}/${event.documentId} does not match its collection's schema: ${describe(first)}`, {
    collection: event.collection,
    documentId: event.documentId,
    path: first.instancePath || '/',
    keyword: first.keyword,
  });
}

/** Refuses an event whose clock runs more than `maxDrift` ms ahead of the server's (`now`). */
export function assertClockInRange(event: SyncEvent, maxDrift: number, now: number): void {
  const millis = millisOf(event.hlc);
  if (millis <= now + maxDrift) return;
  throw new SyncError(
    'CLOCK_DRIFT',
    `event ${event.id} is dated ${new Date(millis).toISOString()}, more than ${maxDrift} ms after the server's time ${new Date(now).toISOString()}: the device's clock is wrong`,
    { eventTime: millis, serverTime: now, maxClockDrift: maxDrift },
  );
}
