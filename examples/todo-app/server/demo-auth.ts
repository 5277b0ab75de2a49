/**
 * The todo app's demo sign-in: two users, no passwords. POST /demo/login
 * with `{ "user": "ana" }` answers a token signed with HMAC-SHA256 that
 * expires in a few minutes; the app's `authToken` function fetches a fresh
 * one when the sync plugin asks (every connection, and before a session
 * ends). A real app puts its identity provider here; the shape stays the
 * same: `authenticate` turns a token into a user and an expiry, and
 * `authorize` decides per document.
 *
 * Lists: each user's private list (its id is the user's name), readable and
 * writable by that user only, and "shared", for both.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

export const DEMO_USERS = ['ana', 'ben'] as const;
export type DemoUserName = (typeof DEMO_USERS)[number];
export const SHARED_LIST = 'shared';

export interface DemoUser {
  name: DemoUserName;
}

export interface DemoAuthOptions {
  /** Signs the tokens; a server restarted with the same secret accepts the tokens it gave before. Default: random per process. */
  secret?: string;
  /** How long a token is valid, in ms. */
  tokenLifetimeMs?: number;
}

const LOGIN_PATH = '/demo/login';
const MAX_BODY_BYTES = 1024;

const isDemoUser = (name: unknown): name is DemoUserName => DEMO_USERS.includes(name as DemoUserName);

/** Whether `user` may read or write `document` of `collection`. */
export function mayAccess(user: DemoUser, collection: string, document: Record<string, unknown>): boolean {
  if (collection !== 'todos') return false;
  if (document.list === SHARED_LIST) return true;
  // A private list: only its owner, and a todo in it carries that owner (no planting a todo in someone's list).
  return document.list === user.name && document.owner === user.name;
}

export function createDemoAuth(options: DemoAuthOptions = {}) {
  const secret = options.secret ?? randomBytes(32).toString('hex');
  const lifetime = options.tokenLifetimeMs ?? 5 * 60_000;
  const sign = (payload: string) => createHmac('sha256', secret).update(payload).digest('base64url');

  function issue(name: DemoUserName, now = Date.now()): { user: DemoUserName; token: string; expiresAt: number } {
    const expiresAt = now + lifetime;
    const payload = `${name}.${expiresAt}`;
    return { user: name, token: `${payload}.${sign(payload)}`, expiresAt };
  }

  /** The user and session end a token names, or null for a forged, malformed or expired one. */
  function verify(token: string | undefined): { user: DemoUser; expiresAt: number } | null {
    const [name, expires, signature] = (token ?? '').split('.');
    if (!isDemoUser(name) || !expires || !signature) return null;
    const expected = Buffer.from(sign(`${name}.${expires}`));
    const given = Buffer.from(signature);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    const expiresAt = Number(expires);
    if (!Number.isSafeInteger(expiresAt) || expiresAt <= Date.now()) return null;
    return { user: { name }, expiresAt };
  }

  return {
    issue,
    /** The sync server's `authenticate`: the session ends when the token does, unless the client renews it. */
    authenticate: (_socket: unknown, token: string | undefined) => verify(token),
    /** The sync server's `authorize`: every read (pull, live, conflict answer, attachment) and every write asks it. */
    authorize: (user: unknown, collection: string, _operation: string, document: Record<string, unknown>) => mayAccess(user as DemoUser, collection, document),
    /** Answers POST /demo/login; false for any other request. */
    handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
      if (new URL(req.url ?? '/', 'http://localhost').pathname !== LOGIN_PATH) return false;
      const reply = (status: number, body: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(body));
      if (req.method !== 'POST') {
        reply(405, { error: 'POST { "user": "ana" | "ben" }' });
        return true;
      }
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => {
        body += chunk;
        if (body.length > MAX_BODY_BYTES) req.destroy();
      });
      req.on('end', () => {
        let name: unknown;
        try {
          name = (JSON.parse(body) as { user?: unknown }).user;
        } catch {
          name = undefined;
        }
        if (!isDemoUser(name)) reply(400, { error: `user must be one of ${DEMO_USERS.join(', ')}` });
        else reply(200, issue(name));
      });
      return true;
    },
  };
}
