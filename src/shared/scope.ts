/**
 * Sync scopes: which documents of a collection a device holds. A scope is
 * written as a small subset of Mango, the query language RxDB apps already
 * use, over top-level fields: equality, `$in`, `$gt`/`$gte`/`$lt`/`$lte`,
 * combined with `$and`. Anything else is refused with INVALID_SCOPE, naming
 * what and where.
 *
 * Inside, a scope is a conjunction of atoms (field, operator, value), kept
 * sorted: two selectors that mean the same give the same atoms, so a scope
 * that did not change is seen not to have changed, and the scope a client
 * asks for intersects the server's rule by concatenation. `null` is no scope
 * at all: every document the user may read.
 *
 * The same atoms are evaluated here (memory storage, live fan-out, the
 * client) and compiled to SQL by the SQLite and PostgreSQL storages, with
 * the same verdict: a value matches only a value of its own JSON type,
 * strings compare by code point, booleans are not ordered, and a missing
 * field matches nothing.
 */
import { SyncError } from './errors.js';
import { isStorableText } from './protocol/index.js';

export type ScopeValue = string | number | boolean;
export type ScopeOperator = 'eq' | 'in' | 'gt' | 'gte' | 'lt' | 'lte';
export type ScopeAtom =
  | { field: string; op: 'in'; value: ScopeValue[] }
  | { field: string; op: Exclude<ScopeOperator, 'in'>; value: ScopeValue };
/** A parsed scope: atoms that must all hold, sorted; null for everything the user may read. */
export type Scope = readonly ScopeAtom[] | null;

/** A scope as apps write it: `{ crewId: 'c7' }`, `{ region: { $in: ['n', 'e'] }, priority: { $gte: 2 } }`, `{ $and: [...] }`. */
export type ScopeSelector = { [field: string]: ScopeValue | { [operator: string]: unknown } } | { $and: ScopeSelector[] };

/** A field a scope may name: a top-level property, as a plain identifier (it is put into SQL as a JSON path). */
const FIELD = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
const OPERATORS: Record<string, ScopeOperator> = { $eq: 'eq', $in: 'in', $gt: 'gt', $gte: 'gte', $lt: 'lt', $lte: 'lte' };
const MAX_ATOMS = 32;
const MAX_IN = 1000;
const MAX_STRING = 1024;
const MAX_DEPTH = 4;

function invalid(where: string, message: string): SyncError {
  return new SyncError('INVALID_SCOPE', `${where}: ${message}`);
}

function checkValue(value: unknown, where: string, ordered: boolean): ScopeValue {
  if (typeof value === 'string') {
    if (value.length > MAX_STRING) throw invalid(where, `a string of at most ${MAX_STRING} characters is allowed`);
    // Storages cannot hold these as they are (PostgreSQL refuses NUL, both SQL storages replace a lone surrogate): no two would compare them alike.
    if (!isStorableText(value)) throw invalid(where, 'a string with a NUL character or an unpaired surrogate cannot be compared alike on every storage');
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw invalid(where, 'a number must be finite');
    return value;
  }
  if (typeof value === 'boolean') {
    if (ordered) throw invalid(where, 'booleans have no order: compare them with equality or $in');
    return value;
  }
  throw invalid(where, `expected a string, number or boolean, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`);
}

function collect(selector: unknown, where: string, atoms: ScopeAtom[], depth: number): void {
  if (typeof selector !== 'object' || selector === null || Array.isArray(selector)) {
    throw invalid(where, 'a scope is an object such as { crewId: "c7" }');
  }
  if (depth > MAX_DEPTH) throw invalid(where, `$and may nest at most ${MAX_DEPTH} deep`);
  for (const [key, condition] of Object.entries(selector)) {
    const at = `${where}.${key}`;
    if (key === '$and') {
      if (!Array.isArray(condition) || condition.length === 0) throw invalid(at, '$and takes a non-empty array of selectors');
      condition.forEach((part, i) => collect(part, `${at}[${i}]`, atoms, depth + 1));
      continue;
    }
    if (key.startsWith('$')) throw invalid(at, `${key} is not supported in a scope; use equality, $in, $gt, $gte, $lt, $lte and $and`);
    if (!FIELD.test(key)) throw invalid(at, 'a scope names top-level fields only, as plain identifiers (letters, digits, _)');
    if (typeof condition !== 'object' || condition === null || Array.isArray(condition)) {
      atoms.push({ field: key, op: 'eq', value: checkValue(condition, at, false) });
      continue;
    }
    const entries = Object.entries(condition);
    if (entries.length === 0) throw invalid(at, 'an empty condition matches nothing in particular: name an operator');
    for (const [name, value] of entries) {
      const op = OPERATORS[name];
      if (!op) throw invalid(`${at}.${name}`, `${name} is not supported in a scope; use $eq, $in, $gt, $gte, $lt or $lte`);
      if (op === 'in') {
        if (!Array.isArray(value) || value.length === 0 || value.length > MAX_IN) throw invalid(`${at}.$in`, `$in takes an array of 1 to ${MAX_IN} values`);
        const values = value.map((item, i) => checkValue(item, `${at}.$in[${i}]`, false));
        atoms.push({ field: key, op, value: [...new Set(values)].sort(compareValues) });
      } else {
        atoms.push({ field: key, op, value: checkValue(value, `${at}.${name}`, op !== 'eq') } as ScopeAtom);
      }
    }
  }
  if (atoms.length > MAX_ATOMS) throw invalid(where, `a scope may hold at most ${MAX_ATOMS} conditions`);
}

/**
 * Parses and checks a selector. `null` and `undefined` are no scope. Throws
 * INVALID_SCOPE naming the part that is not allowed; `where` names the
 * selector in that message (e.g. `scopes.todos`).
 */
export function parseScope(selector: unknown, where = 'scope'): Scope {
  if (selector === null || selector === undefined) return null;
  const atoms: ScopeAtom[] = [];
  collect(selector, where, atoms, 0);
  if (atoms.length === 0) throw invalid(where, 'an empty scope would hold everything: pass null for that');
  return sortAtoms(atoms);
}

function sortAtoms(atoms: ScopeAtom[]): ScopeAtom[] {
  const keyed = atoms.map((atom) => [JSON.stringify([atom.field, atom.op, atom.value]), atom] as const);
  keyed.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  // A condition named twice is one condition.
  return keyed.filter((entry, i) => i === 0 || entry[0] !== keyed[i - 1]![0]).map((entry) => entry[1]);
}

/** Both scopes at once: the documents that match each. */
export function intersectScopes(a: Scope, b: Scope): Scope {
  if (a === null) return b;
  if (b === null) return a;
  return sortAtoms([...a, ...b]);
}

/** One string per scope, equal for equal scopes. */
export function scopeKey(scope: Scope): string {
  return scope === null ? '*' : JSON.stringify(scope.map((atom) => [atom.field, atom.op, atom.value]));
}

export function sameScope(a: Scope, b: Scope): boolean {
  return scopeKey(a) === scopeKey(b);
}

/** The scope as a selector again (what crosses the wire and what apps see). */
export function toSelector(scope: Scope): ScopeSelector | null {
  if (scope === null) return null;
  const op = (atom: ScopeAtom) => `$${atom.op}`;
  return { $and: scope.map((atom) => ({ [atom.field]: { [op(atom)]: atom.value } })) } as ScopeSelector;
}

/** The fields a scope names. */
export function scopeFields(scope: Scope): string[] {
  return scope === null ? [] : [...new Set(scope.map((atom) => atom.field))];
}

function typeOf(value: unknown): 'string' | 'number' | 'boolean' | undefined {
  const type = typeof value;
  return type === 'string' || type === 'number' || type === 'boolean' ? type : undefined;
}

/** Strings by code point (as SQLite and PostgreSQL's "C" collation order UTF-8), numbers by value. */
export function compareValues(a: ScopeValue, b: ScopeValue): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'string' && typeof b === 'string') return compareCodePoints(a, b);
  if (typeof a === 'boolean' && typeof b === 'boolean') return Number(a) - Number(b);
  // Across types: by type name, only so that $in lists sort the same everywhere.
  return typeof a < typeof b ? -1 : 1;
}

function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // UTF-16 order differs from code point order only where a surrogate meets a unit above it.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

function atomHolds(atom: ScopeAtom, value: unknown): boolean {
  const type = typeOf(value);
  if (type === undefined) return false;
  if (atom.op === 'in') return atom.value.some((candidate) => typeof candidate === type && candidate === value);
  if (typeof atom.value !== type) return false;
  if (atom.op === 'eq') return value === atom.value;
  if (type === 'boolean') return false;
  const order = compareValues(value as ScopeValue, atom.value);
  switch (atom.op) {
    case 'gt':
      return order > 0;
    case 'gte':
      return order >= 0;
    case 'lt':
      return order < 0;
    case 'lte':
      return order <= 0;
  }
}

/** Whether a document (its data) is in the scope. */
export function matchesScope(scope: Scope, data: Record<string, unknown> | null | undefined): boolean {
  if (scope === null) return true;
  if (!data) return false;
  return scope.every((atom) => atomHolds(atom, Object.hasOwn(data, atom.field) ? data[atom.field] : undefined));
}

/**
 * The scope as a SQL condition over a JSON column, with its values as
 * parameters: `dialect` says how a field's value and JSON type are read.
 * Fields were checked to be plain identifiers, so they go into the text.
 */
export interface SqlDialect {
  /** The field's value as SQL compares it (text for strings, a number for numbers). */
  value(field: string, type: 'string' | 'number'): string;
  /** A condition that the field holds a JSON value of this type. */
  isType(field: string, type: 'string' | 'number' | 'boolean'): string;
  /** A condition that the field holds this boolean. */
  isBoolean(field: string, value: boolean): string;
  /** The placeholder of the next parameter (`?`, `$3`). */
  param(index: number): string;
  /** How a string comparison is written, for code point order. */
  text(expression: string): string;
}

/**
 * True when every document `scope` matches also matches `other`, judged
 * atom by atom on equalities: each atom of `other` is an equality or an $in
 * that an equality of `scope` on its field satisfies. False is always safe:
 * it only means the caller does the general thing.
 */
export function scopeImplies(scope: Scope, other: Scope): boolean {
  if (other === null) return true;
  if (scope === null) return false;
  return other.every((want) =>
    scope.some((atom) => atom.field === want.field && atom.op === 'eq' && (want.op === 'eq' ? want.value === atom.value : want.op === 'in' && want.value.includes(atom.value))),
  );
}

export function scopeToSql(scope: Scope, dialect: SqlDialect, params: unknown[]): string {
  if (scope === null) return 'TRUE';
  const push = (value: unknown) => {
    params.push(value);
    return dialect.param(params.length);
  };
  const compare = (field: string, op: string, value: string | number) => {
    const type = typeof value as 'string' | 'number';
    const left = dialect.value(field, type);
    return `(${dialect.isType(field, type)} AND ${type === 'string' ? dialect.text(left) : left} ${op} ${type === 'string' ? dialect.text(push(value)) : push(value)})`;
  };
  const equals = (field: string, value: ScopeValue) => (typeof value === 'boolean' ? `(${dialect.isBoolean(field, value)})` : compare(field, '=', value));
  const parts = scope.map((atom) => {
    switch (atom.op) {
      case 'eq':
        return equals(atom.field, atom.value);
      case 'in':
        return `(${atom.value.map((value) => equals(atom.field, value)).join(' OR ')})`;
      default:
        return compare(atom.field, { gt: '>', gte: '>=', lt: '<', lte: '<=' }[atom.op], atom.value as string | number);
    }
  });
  return `(${parts.join(' AND ')})`;
}
