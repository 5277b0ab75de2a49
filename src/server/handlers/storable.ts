/** What no storage could keep or no reader could apply: the checks every pushed event passes before it is saved. */
import { SyncError } from '../../shared/errors.js';
import { jsonLengthBound } from '../../shared/json.js';
import { isStorableText, pushedEventProblem, type SyncEvent } from '../../shared/protocol/index.js';
import { documentBytes } from '../storage/size.js';
import type { ServerContext } from './context.js';

/**
 * Refuses what a storage could not keep, a reader could not apply, or a
 * recursive encoder could not send back out: a document id or clock that
 * syncEventSchema refuses (a push is read by its shape, see
 * pushRowSchema), documents nested deeper than maxDocumentDepth or
 * larger than a pull page carries (maxPullBytes), binary values, numbers
 * JSON cannot carry, and strings (keys, values, patch paths) with a NUL
 * character or an unpaired surrogate. The same event is then refused on
 * every storage, not just on some.
 */
export function assertStorable(ctx: ServerContext<any>, event: SyncEvent): void {
  const problem = pushedEventProblem(event);
  // The id alone names the event: the refused document id may be what is wrong.
  if (problem) throw new SyncError('INVALID_MESSAGE', `event ${event.id}: ${problem.path}: ${problem.message}`, { path: problem.path });
  // Runs for every pushed event: a walk that allocates nothing unless it refuses.
  const refuse = (what: string): never => {
    throw new SyncError('INVALID_MESSAGE', `event ${event.id} for ${event.collection}/${event.documentId}: ${what}`);
  };
  const max = ctx.options.maxDocumentDepth;
  const assertValue = (value: unknown) => {
    const problem = unstorable(value, 1, max);
    if (problem === DEPTH) {
      throw new SyncError('INVALID_MESSAGE', `document ${event.collection}/${event.documentId} is nested deeper than maxDocumentDepth (${max})`, { limit: max });
    }
    if (problem) refuse(problem);
  };
  assertValue(event.data);
  for (const op of event.patch ?? []) {
    if (!isStorableText(op.path) || (op.from !== undefined && !isStorableText(op.from))) refuse('a patch path holds a NUL character or an unpaired surrogate');
    assertValue(op.value);
  }
  assertPullable(ctx, event);
}

/**
 * Refuses a document that no pull page could carry: one larger than
 * maxPullBytes, measured as storage measures it (documentBytes). A push is
 * at most maxPayloadBytes of JSON, so only a maxPullBytes below that can be
 * exceeded; even then a document is measured exactly only when a cheap upper
 * bound (jsonLengthBound) is over it.
 */
function assertPullable(ctx: ServerContext<any>, event: SyncEvent): void {
  const limit = ctx.options.maxPullBytes;
  if (limit >= ctx.options.maxPayloadBytes || jsonLengthBound(event.data) <= limit) return;
  const bytes = documentBytes(event.data);
  if (bytes > limit) {
    throw new SyncError('PAYLOAD_TOO_LARGE', `document ${event.collection}/${event.documentId} is ${bytes} bytes of JSON, more than a pull page carries (maxPullBytes, ${limit})`, { bytes, limit });
  }
}

const DEPTH = 'depth';

/** What in `value` (at nesting `depth`) no storage could keep, or undefined when all of it can be kept. */
function unstorable(value: unknown, depth: number, max: number): string | undefined {
  if (typeof value === 'string') return isStorableText(value) ? undefined : 'a string holds a NUL character or an unpaired surrogate';
  // JSON.parse reads 1e400 as Infinity: kept as is in memory, as null by the storages that keep JSON text.
  if (typeof value === 'number') return Number.isFinite(value) ? undefined : 'a number is too large for JSON (it parsed as Infinity)';
  if (!value || typeof value !== 'object') return undefined;
  // socket.io carries binary data too; a document is JSON, and every storage keeps JSON only.
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return 'a value is binary data, which a JSON document cannot hold';
  if (depth > max) return DEPTH;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = unstorable(value[i], depth + 1, max);
      if (problem) return problem;
    }
    return undefined;
  }
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    if (!isStorableText(key)) return 'a key holds a NUL character or an unpaired surrogate';
    const problem = unstorable((value as Record<string, unknown>)[key], depth + 1, max);
    if (problem) return problem;
  }
  return undefined;
}
