/**
 * The lists a user sees: their own private list and the list shared by all
 * demo users, each with the conflict strategy chosen for it on this device.
 */
import { labelOf, type UserName } from './session.js';

export const SHARED_LIST = 'shared';

export type ListStrategy = 'merge' | 'last-write-wins' | 'manual';

export const STRATEGIES: { value: ListStrategy; label: string }[] = [
  { value: 'merge', label: 'Merge: keep both changes when they touch different fields' },
  { value: 'last-write-wins', label: 'Keep the later change' },
  { value: 'manual', label: 'Ask me' },
];

export interface ListInfo {
  id: string;
  label: string;
}

export function listsOf(user: UserName): ListInfo[] {
  return [
    { id: user, label: `${labelOf(user)}'s list` },
    { id: SHARED_LIST, label: 'Shared' },
  ];
}

const strategyKey = (dbName: string, list: string) => `rxdb-offline-sync-demo:strategy:${dbName}:${list}`;

/** Read at each conflict, so a change of the setting applies to the next one; tabs share it through localStorage. */
export function strategyOf(dbName: string, list: string): ListStrategy {
  const stored = localStorage.getItem(strategyKey(dbName, list));
  return STRATEGIES.some((strategy) => strategy.value === stored) ? (stored as ListStrategy) : 'merge';
}

export function setStrategy(dbName: string, list: string, strategy: ListStrategy): void {
  localStorage.setItem(strategyKey(dbName, list), strategy);
}
