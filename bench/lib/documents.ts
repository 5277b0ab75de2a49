/** The benchmark's documents: a todo with an id, a 40-character title, a boolean, a number and three short tags. */
import type { RxJsonSchema } from 'rxdb';

export interface Todo {
  id: string;
  title: string;
  done: boolean;
  priority: number;
  tags: string[];
}

export const todoSchema: RxJsonSchema<Todo> = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 64 },
    title: { type: 'string' },
    done: { type: 'boolean' },
    priority: { type: 'number' },
    tags: { type: 'array', items: { type: 'string' } },
  },
  required: ['id', 'title', 'done', 'priority', 'tags'],
};

const WORDS = ['call', 'plan', 'ship', 'fix', 'buy', 'send', 'read', 'pack', 'book', 'check', 'clean', 'order'];
const TAGS = ['home', 'work', 'urgent', 'later', 'errand', 'phone', 'team', 'idea'];

/** A small seeded generator (mulberry32), so every run and both systems get the same documents. */
export function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` todos whose ids start with `prefix`; the same arguments always give the same documents. */
export function makeTodos(count: number, prefix = 'todo', seed = 1): Todo[] {
  const next = random(seed);
  const pick = <T>(list: readonly T[]) => list[Math.floor(next() * list.length)]!;
  const todos: Todo[] = new Array(count);
  for (let i = 0; i < count; i++) {
    let title = '';
    while (title.length < 40) title += `${pick(WORDS)} `;
    todos[i] = {
      id: `${prefix}-${String(i).padStart(7, '0')}`,
      title: title.slice(0, 40),
      done: next() < 0.3,
      priority: Math.floor(next() * 5),
      tags: [pick(TAGS), pick(TAGS), pick(TAGS)],
    };
  }
  return todos;
}
