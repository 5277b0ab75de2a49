import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import { VitePWA } from 'vite-plugin-pwa';

const root = fileURLToPath(new URL('.', import.meta.url));

// `npm run build:example` builds into dist/, which `npm start` serves from the sync server's port.
// `npm run dev:example` runs Vite's dev server and forwards socket.io and the demo login to a server on port 3000.
export default defineConfig({
  root,
  // Absolute: a page opened at a deep URL (/some/path, served index.html) still finds /assets/.
  base: '/',
  // The app imports the plugin by its package name, as an app would; here it comes from the sources.
  resolve: { alias: { 'rxdb-offline-sync': fileURLToPath(new URL('../../src/client/index.ts', import.meta.url)) } },
  plugins: [
    VitePWA({
      // An update is offered ("Reload"), never forced on someone in the middle of an edit.
      registerType: 'prompt',
      // The app registers the worker itself (virtual:pwa-register), to show the offer.
      injectRegister: false,
      includeAssets: ['icon.svg'],
      manifest: {
        name: 'Crew todos',
        short_name: 'Todos',
        description: 'Todos that work offline and sync when the network is back.',
        start_url: '/',
        scope: '/',
        display: 'standalone',
        background_color: '#f6f7f5',
        theme_color: '#2f7d5b',
        icons: [
          { src: '/icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: '/icon-512.png', sizes: '512x512', type: 'image/png' },
          { src: '/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
          { src: '/icon.svg', sizes: 'any', type: 'image/svg+xml' },
        ],
      },
      workbox: {
        // The app shell: every built file, so that the app opens with no network at all.
        globPatterns: ['**/*.{js,css,html,svg,png,webmanifest}'],
        maximumFileSizeToCacheInBytes: 4 * 1024 * 1024,
        // Any path opens the app (as the server answers it), except the server's own endpoints.
        navigateFallback: '/index.html',
        navigateFallbackDenylist: [/^\/socket\.io\//, /^\/demo\//, /^\/health/, /^\/metrics/],
      },
    }),
  ],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 2000,
  },
  server: {
    port: 5173,
    proxy: {
      '/socket.io': { target: 'http://localhost:3000', ws: true },
      '/demo': { target: 'http://localhost:3000' },
    },
  },
});
