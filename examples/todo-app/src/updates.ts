/**
 * The service worker: the app shell is cached, so the app opens with no
 * network. A new version waits until the user takes it ("Reload"): an
 * update never reloads the page under someone who is typing.
 */
import { registerSW } from 'virtual:pwa-register';

export function registerUpdates(options: { banner: HTMLElement; reload: HTMLButtonElement; onOfflineReady: () => void }): void {
  if (!('serviceWorker' in navigator)) return;
  const update = registerSW({
    onNeedRefresh() {
      options.banner.hidden = false;
    },
    onOfflineReady: options.onOfflineReady,
    onRegisterError(error: unknown) {
      console.warn('service worker not registered: the app will not open offline', error);
    },
  });
  options.reload.addEventListener('click', () => void update(true));
}
