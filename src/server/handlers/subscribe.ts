/** Subscriptions: which collections, in which scopes, a socket gets live messages for. */
import { SyncError } from '../../shared/errors.js';
import { parseMessage, subscribeMessageSchema, type SubscribeReply } from '../../shared/protocol/index.js';
import { toSelector, type Scope, type ScopeSelector } from '../../shared/scope.js';
import { effectiveScope, scopedRoomOf, type SocketScopes } from '../scopes.js';
import { assertKnownCollection, roomOf, type ServerContext, type SyncSocket } from './context.js';

export async function handleSubscribe<User>(ctx: ServerContext<User>, socket: SyncSocket<User>, raw: unknown): Promise<SubscribeReply> {
  const message = parseMessage(subscribeMessageSchema, raw, 'subscribe message');
  const wanted = [...new Set(message.collections)];
  wanted.forEach((collection) => assertKnownCollection(ctx, collection));
  for (const collection of Object.keys(message.scopes ?? {})) {
    if (!wanted.includes(collection)) throw new SyncError('INVALID_SCOPE', `scopes.${collection}: a scope for a collection the subscription does not name`, { collection });
  }
  const scopes: SocketScopes = {};
  for (const collection of wanted) {
    const scope = await effectiveScope(ctx, socket.data.user, collection, message.scopes?.[collection] ?? null);
    if (scope !== null) scopes[collection] = [...scope];
  }
  // Rooms joined and left in one step after the last await: a pull sent right behind it (clients
  // do not wait for this answer) is served only after this message, so no event falls between;
  // and a later subscription, served in turn, always has the last word.
  const changes = [socket.join(wanted.map((collection) => (scopes[collection] ? scopedRoomOf(collection) : roomOf(collection))))];
  for (const collection of socket.data.collections) {
    if (!wanted.includes(collection) || scopes[collection]) changes.push(socket.leave(roomOf(collection)));
    if (!wanted.includes(collection) || !scopes[collection]) changes.push(socket.leave(scopedRoomOf(collection)));
  }
  socket.data.collections = wanted;
  socket.data.scopes = scopes;
  await Promise.all(changes);
  return { collections: wanted, ...scopeReply(scopes) };
}

export function scopeReply(scopes: SocketScopes): { scopes?: Record<string, ScopeSelector | null> } {
  const entries = Object.entries(scopes);
  return entries.length === 0 ? {} : { scopes: Object.fromEntries(entries.map(([collection, atoms]) => [collection, toSelector(atoms)])) };
}

/** Moves a subscribed socket's live delivery to `scope` (a rule that changed since it subscribed). */
export async function followScope(socket: SyncSocket<any>, collection: string, scope: Scope): Promise<void> {
  if (!socket.data.collections.includes(collection)) return;
  const scopes = { ...socket.data.scopes };
  if (scope === null) delete scopes[collection];
  else scopes[collection] = [...scope];
  socket.data.scopes = scopes;
  await Promise.all(scope === null ? [socket.leave(scopedRoomOf(collection)), socket.join(roomOf(collection))] : [socket.leave(roomOf(collection)), socket.join(scopedRoomOf(collection))]);
}
