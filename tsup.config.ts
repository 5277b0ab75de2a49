import { defineConfig } from 'tsup';

export default defineConfig([
  {
    // `.` is the browser plugin, `./server` the sync server, `./protocol` the wire protocol, `./testing` the
    // storage conformance suite. One build, so that their shared code is shared chunks and one clean covers all.
    // package.json exports ./testing as ESM only: it runs under Vitest, which CommonJS cannot load.
    entry: { index: 'src/client/index.ts', server: 'src/server/index.ts', protocol: 'src/protocol.ts', testing: 'src/testing/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node20',
    // The CJS build gets import.meta.url, which loading the server's optional packages (src/server/optional.ts) uses.
    shims: true,
  },
  {
    entry: { cli: 'src/cli.ts' },
    format: ['esm'],
    sourcemap: true,
    target: 'node20',
    banner: { js: '#!/usr/bin/env node' },
  },
]);
