import fastJsonPatch from 'fast-json-patch';
import type { z } from 'zod';
import { SyncError } from './errors.js';

export type JsonObject = Record<string, unknown>;

/** An object that is not an array or null: the shape of a JSON object (parsed JSON has string keys only). */
export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
/** One RFC 6902 JSON patch operation, as it travels on the wire. */
export interface PatchOperation {
  op: 'add' | 'remove' | 'replace' | 'move' | 'copy' | 'test';
  path: string;
  value?: unknown;
  from?: string;
}

/** Structural equality of JSON values (key order does not matter). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const aKeys = Object.keys(a).filter((k) => (a as JsonObject)[k] !== undefined);
  const bKeys = Object.keys(b).filter((k) => (b as JsonObject)[k] !== undefined);
  if (aKeys.length !== bKeys.length) return false;
  for (const key of aKeys) if (!jsonEqual((a as JsonObject)[key], (b as JsonObject)[key])) return false;
  return true;
}

/** The JSON patch that turns `from` into `to`. */
export function diff(from: JsonObject, to: JsonObject): PatchOperation[] {
  return fastJsonPatch.compare(from, to) as PatchOperation[];
}

/** Applies a patch to a copy of `doc`; operations whose path no longer exists are skipped. */
export function applyPatchLenient(doc: JsonObject, patch: readonly PatchOperation[]): JsonObject {
  let result = fastJsonPatch.deepClone(doc) as JsonObject;
  for (const operation of patch) {
    try {
      result = fastJsonPatch.applyOperation(result, operation as fastJsonPatch.Operation, false, true).newDocument as JsonObject;
    } catch {
      // The other side removed what this operation touched; its removal stands.
    }
  }
  return result;
}

/**
 * A number never below the length of `JSON.stringify(value)`, found several
 * times faster than the string itself: every character of a string counted
 * as an escape (6), every number at its longest (24). For deciding whether a
 * batch can stay under a size without serializing each event to find out.
 */
export function jsonLengthBound(value: unknown): number {
  if (typeof value === 'string') return 6 * value.length + 2;
  if (value === null || typeof value !== 'object') return 24;
  let length = 2;
  if (Array.isArray(value)) {
    for (const item of value) length += jsonLengthBound(item) + 1;
    return length;
  }
  for (const key of Object.keys(value)) length += 6 * key.length + 4 + jsonLengthBound((value as Record<string, unknown>)[key]);
  return length;
}

/** Sets a field of a copy as data: a parsed "__proto__" key assigned plainly would set the copy's prototype instead. */
function setField(copy: JsonObject, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true });
  else copy[key] = value;
}

/**
 * A deep copy of a JSON value, frozen all the way down, with `fields` added
 * to an object's top level: for values that are stored once and handed out
 * many times without copying again. Several times faster than
 * structuredClone for documents.
 */
export function frozenJsonCopy<T, F extends object = object>(value: T, fields?: F): T & F {
  if (value === null || typeof value !== 'object') return value as T & F;
  if (Array.isArray(value)) return Object.freeze(value.map((item) => frozenJsonCopy(item))) as T & F;
  const copy: JsonObject = {};
  for (const key of Object.keys(value)) setField(copy, key, frozenJsonCopy((value as JsonObject)[key]));
  // `fields` (the caller's own keys, plain values) join an object's top level: one copy, not a copy of
  // a copy. (An array or a plain value has no top level to join: they are not added.)
  if (fields) Object.assign(copy, fields);
  return Object.freeze(copy) as T & F;
}

/**
 * `{ ...data, ...fields }` for a document: V8 (Node 20) takes a slow path,
 * many times slower, for an object spread followed by more properties, which
 * the document paths do per document. `fields` are the caller's own keys.
 */
export function withFields<T extends object>(data: JsonObject, fields: T): JsonObject & T {
  const copy: JsonObject = {};
  for (const key of Object.keys(data)) setField(copy, key, data[key]);
  return Object.assign(copy, fields);
}

export function deepClone<T>(value: T): T {
  return fastJsonPatch.deepClone(value) as T;
}

/**
 * For a value that fits no branch of a union (`false | { ... }`), the issue of
 * the branch it came closest to: an object given where `false | object` is
 * allowed is reported by what is wrong inside it, not as "Invalid input".
 */
function innermost(issue: z.core.$ZodIssue): z.core.$ZodIssue {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return issue;
  const typeMismatch = (issues: z.core.$ZodIssue[]) => issues[0]?.path.length === 0 && (issues[0].code === 'invalid_type' || issues[0].code === 'invalid_value');
  const branch = issue.errors.find((issues) => issues.length > 0 && !typeMismatch(issues));
  if (!branch) return issue;
  const inner = innermost(branch[0]!);
  return { ...inner, path: [...issue.path, ...inner.path] };
}

/**
 * Validates an options object with a zod schema. The error names the option
 * and the value it got, e.g. `invalid option retry.maxRetries: -1 (...)`.
 */
export function parseOptions<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = innermost(result.error.issues[0]!);
  const path = issue.path.join('.');
  let got: unknown = value;
  for (const key of issue.path) got = got && typeof got === 'object' ? (got as JsonObject)[key as string] : undefined;
  const shown = typeof got === 'function' ? 'a function' : JSON.stringify(got) ?? String(got);
  throw new SyncError(
    'INVALID_OPTION',
    `invalid ${what} option ${path || '(options)'}: ${issue.message} (got ${shown})`,
    { option: path, value: got },
  );
}

/** The UTF-8 length of a string, in bytes, without encoding it (an unpaired surrogate counts 3, as TextEncoder writes U+FFFD). */
export function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) continue;
    if (code < 0x800) bytes += 1;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      // A pair: 2 UTF-16 units, 4 bytes.
      bytes += 2;
      i++;
    } else bytes += 2;
  }
  return bytes;
}
