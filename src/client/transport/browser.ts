/**
 * The browser knows sooner than any heartbeat: `offline` closes the
 * connection at once (the status says so, and requests fail instead of
 * waiting out their timeout), and `online` or the page becoming visible
 * again (a phone unlocked, a laptop woken) connects at once, skipping
 * whatever wait the backoff had left.
 */

/** Listens for the browser's word on the network (nothing outside a browser); returns the functions that stop listening. */
export function watchBrowser(on: { offline(): void; back(): void }): (() => void)[] {
  const detach: (() => void)[] = [];
  const target = globalThis as unknown as Partial<Pick<Window, 'addEventListener' | 'removeEventListener'>> & { document?: Document };
  if (typeof target.addEventListener !== 'function' || typeof target.removeEventListener !== 'function') return detach;
  const listen = (at: { addEventListener: Window['addEventListener']; removeEventListener: Window['removeEventListener'] }, type: string, listener: () => void) => {
    const remove = at.removeEventListener.bind(at);
    at.addEventListener(type, listener);
    detach.push(() => remove(type, listener));
  };
  listen(target as Window, 'offline', () => on.offline());
  listen(target as Window, 'online', () => on.back());
  const document = target.document;
  if (document && typeof document.addEventListener === 'function') {
    listen(document as unknown as Window, 'visibilitychange', () => {
      if (document.visibilityState === 'visible') on.back();
    });
  }
  return detach;
}
