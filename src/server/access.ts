/** Authorization of every read and write, and what of a document may leave the server. */
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { DocumentHead, StoredEvent, SyncEvent } from '../shared/protocol.js';
import type { AccessOperation, Authorize } from './options.js';
import type { Redactor } from './redact.js';

export interface AccessContext<User> {
  authorize?: Authorize<User>;
  redactor: Redactor;
  logger: Logger;
}

/**
 * Asks `authorize`. An app function that throws has not decided: the whole
 * message fails with AUTHORIZATION_FAILED, which clients retry, rather than
 * a denial that would turn a passing outage into a refused write or a
 * skipped read.
 */
export async function allowed<User>(
  ctx: AccessContext<User>,
  user: User,
  collection: string,
  operation: AccessOperation,
  document: Record<string, unknown>,
): Promise<boolean> {
  if (!ctx.authorize) return true;
  try {
    return (await ctx.authorize(user, collection, operation, document)) === true;
  } catch (error) {
    ctx.logger.error({ err: error, collection, operation }, 'authorize threw; the message fails and will be retried');
    throw new SyncError('AUTHORIZATION_FAILED', `could not check access to ${collection} (${operation}); try again later`);
  }
}

/**
 * A write must be allowed on the new document and, when the server holds a
 * version of it, on that version too: otherwise a user could take over
 * another's document by writing it with their own owner field.
 */
export async function assertMayWrite<User>(ctx: AccessContext<User>, user: User, event: SyncEvent, head: DocumentHead | undefined): Promise<void> {
  if (!ctx.authorize) return;
  const ok =
    (await allowed(ctx, user, event.collection, event.op, event.data)) &&
    (!head || (await allowed(ctx, user, event.collection, event.op, head.data)));
  if (!ok) throw unauthorized(event);
}

export function unauthorized(event: SyncEvent): SyncError {
  return new SyncError('UNAUTHORIZED', `not allowed to ${event.op} ${event.collection}/${event.documentId}`, {
    collection: event.collection,
    documentId: event.documentId,
    operation: event.op,
  });
}

/** The events `user` may read, stripped of sensitive fields; the others are left out. */
export async function readable<User, E extends StoredEvent>(ctx: AccessContext<User>, user: User, events: E[]): Promise<E[]> {
  // Nothing to check or strip: the common case of a pull, without a promise per event.
  if (!ctx.authorize && !ctx.redactor.active) return events;
  const visible: E[] = [];
  for (const event of events) {
    if (await allowed(ctx, user, event.collection, 'read', event.data)) visible.push(ctx.redactor.event(event));
  }
  return visible;
}

/** A conflict answer's head as `user` may see it, or undefined when they may not read it. */
export async function readableHead<User>(ctx: AccessContext<User>, user: User, head: DocumentHead): Promise<DocumentHead | undefined> {
  if (!(await allowed(ctx, user, head.collection, 'read', head.data))) return undefined;
  return ctx.redactor.head(head);
}
