/** The todo app's demo sign-in: signed tokens that expire, and lists kept to their users. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createDemoAuth, mayAccess } from '../examples/todo-app/server/demo-auth.js';

let server: Server | undefined;
afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

describe('demo auth', () => {
  it('takes the tokens it issued until they expire, and no forged or tampered one', () => {
    const auth = createDemoAuth({ secret: 's', tokenLifetimeMs: 60_000 });
    const { token, expiresAt } = auth.issue('ana');
    expect(auth.authenticate(null, token)).toEqual({ user: { name: 'ana' }, expiresAt });
    expect(auth.authenticate(null, token.replace(/^ana/, 'ben'))).toBeNull();
    expect(createDemoAuth({ secret: 'other' }).authenticate(null, token)).toBeNull();
    expect(auth.authenticate(null, auth.issue('ben', Date.now() - 120_000).token)).toBeNull();
    expect(auth.authenticate(null, undefined)).toBeNull();
  });

  it("keeps a private list to its owner and lets both users into the shared one", () => {
    const ana = { name: 'ana' as const };
    expect(mayAccess(ana, 'todos', { list: 'ana', owner: 'ana' })).toBe(true);
    expect(mayAccess(ana, 'todos', { list: 'ben', owner: 'ben' })).toBe(false);
    expect(mayAccess(ana, 'todos', { list: 'ben', owner: 'ana' })).toBe(false);
    expect(mayAccess(ana, 'todos', { list: 'ana', owner: 'ben' })).toBe(false);
    expect(mayAccess(ana, 'todos', { list: 'shared', owner: 'ben' })).toBe(true);
    expect(mayAccess(ana, 'other', { list: 'shared' })).toBe(false);
  });

  it('answers POST /demo/login with a token for a demo user, and refuses anyone else', async () => {
    const auth = createDemoAuth();
    server = createServer((req, res) => {
      if (!auth.handleRequest(req, res)) res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/demo/login`;
    const login = (body: string) => fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } });

    const answer = await login('{"user":"ben"}');
    expect(answer.status).toBe(200);
    const { token } = (await answer.json()) as { token: string };
    expect(auth.authenticate(null, token)).toMatchObject({ user: { name: 'ben' } });
    expect((await login('{"user":"eve"}')).status).toBe(400);
    expect((await login('not json')).status).toBe(400);
    expect((await fetch(url)).status).toBe(405);
  });
});
