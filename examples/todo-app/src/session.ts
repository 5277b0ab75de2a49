/**
 * Who uses this device: one of the demo users, picked on the sign-in screen
 * and remembered, so that the app opens signed in with no network. The
 * sync plugin's `authToken` function gets a short-lived token from the
 * server's demo login and fetches a fresh one before it runs out.
 */
export const USERS = [
  { name: 'ana', label: 'Ana' },
  { name: 'ben', label: 'Ben' },
] as const;
export type UserName = (typeof USERS)[number]['name'];

const USER_KEY = 'rxdb-offline-sync-demo:user';
/** A token with less than this left is replaced: the plugin asks again when it renews a session, a minute before it ends. */
const FRESH_FOR_MS = 90_000;

export const isUserName = (name: unknown): name is UserName => USERS.some((user) => user.name === name);
export const labelOf = (name: string): string => USERS.find((user) => user.name === name)?.label ?? name;

/** The signed-in user: `?user=` (remembered) or the one picked before. */
export function signedInUser(params: URLSearchParams): UserName | null {
  const asked = params.get('user');
  if (isUserName(asked)) localStorage.setItem(USER_KEY, asked);
  const stored = localStorage.getItem(USER_KEY);
  return isUserName(stored) ? stored : null;
}

export function signIn(name: UserName): void {
  localStorage.setItem(USER_KEY, name);
}

export function signOut(): void {
  localStorage.removeItem(USER_KEY);
}

export interface TokenSource {
  /** The plugin's `authToken`: a token with time left, fetched when there is none. */
  authToken(): Promise<string | undefined>;
  /** Drops the token held, after the server refused it (a server restarted with another key). */
  forget(): void;
}

export function tokenSource(serverUrl: string, user: UserName): TokenSource {
  let held: { token: string; expiresAt: number } | undefined;
  return {
    async authToken() {
      if (held && held.expiresAt - Date.now() > FRESH_FOR_MS) return held.token;
      const response = await fetch(new URL('/demo/login', serverUrl), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user }),
      });
      if (!response.ok) throw new Error(`demo login answered ${response.status}`);
      held = (await response.json()) as { token: string; expiresAt: number };
      return held.token;
    },
    forget() {
      held = undefined;
    },
  };
}
