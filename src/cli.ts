/** Entry point of the `rxdb-offline-sync` binary; see src/cli/program.ts. */
import { main } from './cli/program.js';

main(process.argv).then((code) => {
  if (code !== undefined) process.exitCode = code;
});
