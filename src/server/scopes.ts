/**
 * Sync scopes on the server: the scope a socket gets in a collection is the
 * one its client asks for, within the server's rule for its user, over the
 * fields the server declared for that collection. Live fan-out sends a
 * scoped socket the events in its scope, and a leave for each document an
 * event moved out of it.
 */
import type { RemoteSocket } from 'socket.io';
import { SyncError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { intersectScopes, matchesScope, parseScope, scopeFields, scopeKey, type Scope, type ScopeAtom } from '../shared/scope.js';
import type { ResolvedServerOptions } from './options.js';

/** The socket.io room of a collection's scoped readers (the others are in `collection:<name>`). */
export function scopedRoomOf(collection: string): string {
  return `scoped:${collection}`;
}

interface ScopeContext<User> {
  options: Pick<ResolvedServerOptions<User>, 'scopeFields' | 'scopes'>;
  logger: Logger;
}

function assertDeclared(scope: Scope, declared: readonly string[] | undefined, collection: string, where: string): void {
  const fields = scopeFields(scope);
  if (fields.length === 0) return;
  if (!declared) throw new SyncError('INVALID_SCOPE', `${where}: collection "${collection}" takes no scopes (the server declares no scopeFields for it)`, { collection });
  const undeclared = fields.filter((field) => !declared.includes(field));
  if (undeclared.length > 0) {
    throw new SyncError('INVALID_SCOPE', `${where}: ${undeclared.map((field) => `"${field}"`).join(', ')} is not a scope field of "${collection}" (the server declares ${declared.join(', ')})`, {
      collection,
      fields: undeclared,
    });
  }
}

/** The server's rule for `user` in `collection`; a rule that throws or answers nonsense fails the message, which the client retries. */
async function ruleScope<User>(ctx: ScopeContext<User>, user: User, collection: string): Promise<Scope> {
  const rule = ctx.options.scopes;
  if (!rule) return null;
  let answer: unknown;
  try {
    answer = await rule(user, collection);
  } catch (error) {
    ctx.logger.error({ err: error, collection }, 'the scopes rule threw; the message fails and will be retried');
    throw new SyncError('AUTHORIZATION_FAILED', `could not decide the scope of ${collection}; try again later`);
  }
  try {
    const scope = parseScope(answer ?? null, `the server's scope rule for ${collection}`);
    assertDeclared(scope, ctx.options.scopeFields[collection], collection, `the server's scope rule for ${collection}`);
    return scope;
  } catch (error) {
    ctx.logger.error({ err: error, collection }, 'the scopes rule answered a scope the server cannot use');
    throw new SyncError('AUTHORIZATION_FAILED', `could not decide the scope of ${collection}; try again later`);
  }
}

/** The scope a client gets: what it asks for (`want`, a selector or null) within the rule for its user. */
export async function effectiveScope<User>(ctx: ScopeContext<User>, user: User, collection: string, want: unknown): Promise<Scope> {
  const asked = parseScope(want, `scopes.${collection}`);
  assertDeclared(asked, ctx.options.scopeFields[collection], collection, `scopes.${collection}`);
  return intersectScopes(asked, await ruleScope(ctx, user, collection));
}

/** Whether any scope can apply to `collection` (a client's or the rule's): then pushes to it note what they replace. */
export function mayBeScoped(options: Pick<ResolvedServerOptions<unknown>, 'scopeFields'>, collection: string): boolean {
  return options.scopeFields[collection] !== undefined;
}

/** Scopes as a socket holds them in `data` (plain atoms: socket data crosses instances as JSON). */
export type SocketScopes = Record<string, ScopeAtom[]>;

/** An event on its way to scoped readers, with the document it replaced (null: none; undefined: not known). */
export interface ScopedLiveEvent<E> {
  event: E;
  before: Record<string, unknown> | null | undefined;
}

/**
 * What a reader in `scope` gets of `events`: those in it, and a leave for
 * each whose document was in it before (or may have been: not known) and
 * is not now.
 */
export function splitForScope<E extends { data: Record<string, unknown>; baseEventId: string | null }>(
  scope: Scope,
  events: readonly ScopedLiveEvent<E>[],
): { inScope: E[]; leaving: E[] } {
  const inScope: E[] = [];
  const leaving: E[] = [];
  for (const { event, before } of events) {
    if (matchesScope(scope, event.data)) inScope.push(event);
    else if (before === undefined ? event.baseEventId !== null : before !== null && matchesScope(scope, before)) leaving.push(event);
  }
  return { inScope, leaving };
}

/** Groups sockets by their scope in `collection`: one split per distinct scope. */
export function byScope<User, S extends Pick<RemoteSocket<never, { scopes?: SocketScopes; user: User }>, 'id' | 'data'>>(
  sockets: readonly S[],
  collection: string,
): Map<string, { scope: Scope; sockets: S[] }> {
  const groups = new Map<string, { scope: Scope; sockets: S[] }>();
  for (const socket of sockets) {
    const scope = socket.data.scopes?.[collection] ?? null;
    const key = scopeKey(scope);
    const group = groups.get(key);
    if (group) group.sockets.push(socket);
    else groups.set(key, { scope, sockets: [socket] });
  }
  return groups;
}
