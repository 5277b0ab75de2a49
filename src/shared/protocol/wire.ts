/**
 * What every message shares: an error as it crosses the wire, the
 * acknowledgement each request gets, and the check of a received message.
 */
import { z } from 'zod';
import { ERROR_CODES, SyncError, type WireError } from '../errors.js';

export const wireErrorSchema = z.object({
  code: z.enum(ERROR_CODES),
  message: z.string(),
  details: z.unknown().optional(),
});

/** Every acknowledgement is either `{ ok: true, ...reply }` or `{ ok: false, error }`. */
export type Ack<T> = ({ ok: true } & T) | { ok: false; error: WireError };
export function ackSchema<T extends z.ZodObject>(reply: T) {
  return z.union([reply.extend({ ok: z.literal(true) }), z.object({ ok: z.literal(false), error: wireErrorSchema })]);
}

/**
 * Checks a message against its schema; a failure becomes an INVALID_MESSAGE
 * error that names the first offending field. `quick`, one of the checks in
 * wire-checks.ts, takes the common case without the schema: a value it
 * passes is one the schema would return unchanged.
 */
export function parseMessage<T extends z.ZodType>(schema: T, value: unknown, what: string, quick?: (value: unknown) => boolean): z.infer<T> {
  if (quick?.(value)) return value as z.infer<T>;
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const path = issue.path.length > 0 ? issue.path.join('.') : '(message)';
  throw new SyncError('INVALID_MESSAGE', `invalid ${what}: ${path}: ${issue.message}`, {
    issues: result.error.issues.slice(0, 5).map((i) => ({ path: i.path.join('.'), message: i.message })),
  });
}
