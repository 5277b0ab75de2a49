import { compareHlc } from '../../shared/hlc.js';
import { applyPatchLenient, diff, jsonEqual, type PatchOperation } from '../../shared/json.js';
import { lastWriteWins } from './last-write-wins.js';
import type { Conflict, Resolution } from './types.js';

/** True when one JSON pointer is the other or lies inside it. */
function overlaps(a: string, b: string): boolean {
  return a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
}

/**
 * Field-level three-way merge. The local changes (the JSON patch from the
 * base to the local version) are applied onto the server's version; where both
 * sides changed the same field, the later clock's value stands. Arrays are
 * values: two sides that both change an array do not interleave it, the later
 * clock's array wins. A delete against an update falls back to last-write-wins.
 */
export function merge(conflict: Conflict): Resolution {
  const { local, remote, base } = conflict;
  if (!remote) return { action: 'keep-local' };
  if (local.deleted || remote.deleted) return lastWriteWins(conflict);
  const baseData = base && !base.deleted ? base.data : {};
  const localPatch = wholeAttachments(arrayAware(diff(baseData, local.data), baseData, local.data), baseData, local.data);
  const remotePatch = wholeAttachments(arrayAware(diff(baseData, remote.data), baseData, remote.data), baseData, remote.data);
  const localIsLater = compareHlc(local.hlc, remote.hlc) > 0;
  const touchedByRemote = remotePatch.map((operation) => operation.path);
  const kept = localPatch.filter(
    (operation) => localIsLater || !touchedByRemote.some((path) => overlaps(path, operation.path)),
  );
  const merged = applyPatchLenient(withAttachmentsField(remote.data, kept), kept);
  // Attachments all removed: no field, as a document without attachments has none.
  if (merged._attachments && Object.keys(merged._attachments).length === 0) delete merged._attachments;
  if (jsonEqual(merged, remote.data)) return { action: 'keep-remote' };
  if (jsonEqual(merged, local.data)) return { action: 'keep-local' };
  return { action: 'write', data: merged };
}

/**
 * Makes each attachment one value: operations inside one
 * (`/_attachments/<id>/digest`, `.../length`) become one of the whole
 * attachment, since its digest, length and type describe one content and
 * are never taken from two sides; and the first attachments added to a
 * document (or the last removed) become one operation per attachment, so
 * that two sides adding different ones keep both.
 */
function wholeAttachments(patch: PatchOperation[], from: Record<string, unknown>, to: Record<string, unknown>): PatchOperation[] {
  const result: PatchOperation[] = [];
  const replaced = new Set<string>();
  for (const operation of patch) {
    if (operation.path === '/_attachments') {
      const ids = (side: Record<string, unknown>) => Object.keys((side._attachments as Record<string, unknown> | undefined) ?? {});
      const key = (id: string) => `/_attachments/${id.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      for (const id of ids(from)) if (!ids(to).includes(id)) result.push({ op: 'remove', path: key(id) } as PatchOperation);
      for (const id of ids(to)) result.push({ op: 'add', path: key(id), value: valueAt(to, key(id)) } as PatchOperation);
      continue;
    }
    const match = /^\/_attachments\/[^/]+(?=\/)/.exec(operation.path);
    if (!match) {
      result.push(operation);
      continue;
    }
    if (replaced.has(match[0])) continue;
    replaced.add(match[0]);
    result.push({ op: 'add', path: match[0], value: valueAt(to, match[0]) } as PatchOperation);
  }
  return result;
}

/** `data` with an `_attachments` object for the operations on single attachments to go into (a copy: `data` is not changed). */
function withAttachmentsField(data: Record<string, unknown>, patch: readonly PatchOperation[]): Record<string, unknown> {
  if (data._attachments !== undefined || !patch.some((operation) => operation.path.startsWith('/_attachments/'))) return data;
  return { ...data, _attachments: {} };
}

/** Replaces element-level operations inside an array by one replace of the whole array. */
function arrayAware(patch: PatchOperation[], from: Record<string, unknown>, to: Record<string, unknown>): PatchOperation[] {
  const result: PatchOperation[] = [];
  const replacedArrays = new Set<string>();
  for (const operation of patch) {
    const arrayPath = enclosingArray(from, to, operation.path);
    if (!arrayPath) {
      result.push(operation);
      continue;
    }
    if (replacedArrays.has(arrayPath)) continue;
    replacedArrays.add(arrayPath);
    result.push({ op: 'replace', path: arrayPath, value: valueAt(to, arrayPath) } as PatchOperation);
  }
  return result;
}

function enclosingArray(from: unknown, to: unknown, path: string): string | undefined {
  const parts = path.split('/').slice(1);
  let a: unknown = from;
  let b: unknown = to;
  for (let i = 0; i < parts.length - 1; i++) {
    const key = unescape(parts[i]!);
    a = a && typeof a === 'object' ? (a as Record<string, unknown>)[key] : undefined;
    b = b && typeof b === 'object' ? (b as Record<string, unknown>)[key] : undefined;
    if (Array.isArray(a) || Array.isArray(b)) return `/${parts.slice(0, i + 1).join('/')}`;
  }
  return undefined;
}

function valueAt(doc: unknown, path: string): unknown {
  let value: unknown = doc;
  for (const part of path.split('/').slice(1)) {
    value = value && typeof value === 'object' ? (value as Record<string, unknown>)[unescape(part)] : undefined;
  }
  return value;
}

const unescape = (part: string) => part.replace(/~1/g, '/').replace(/~0/g, '~');
