/**
 * The server's drivers are optional peer dependencies: an app installs the
 * one its storage or option uses, and a browser app installs none. They are
 * loaded here, on first use, so that a missing one is named in the error.
 */
import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

/**
 * Loads `name` for `neededBy` (a class or option the user chose). Only a
 * package that cannot be found becomes the install hint; an error raised
 * while the package itself loads (a broken native build, a missing
 * dependency of its own) is thrown as it is.
 */
export function requireOptional<T>(name: string, neededBy: string): T {
  let path: string;
  try {
    path = load.resolve(name);
  } catch (error) {
    throw new Error(`${neededBy} needs the package ${name}: npm i ${name}`, { cause: error });
  }
  return load(path) as T;
}
