import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const root = fileURLToPath(new URL('.', import.meta.url));

// `npm run build:example` builds into dist/, which `npm start` serves from the sync server's port.
// `npm run dev:example` runs Vite's dev server and forwards socket.io to a server on port 3000.
export default defineConfig({
  root,
  base: './',
  // The app imports the plugin by its package name, as an app would; here it comes from the sources.
  resolve: { alias: { 'rxdb-offline-sync': fileURLToPath(new URL('../../src/client/index.ts', import.meta.url)) } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 2000,
  },
  server: {
    port: 5173,
    proxy: { '/socket.io': { target: 'http://localhost:3000', ws: true } },
  },
});
