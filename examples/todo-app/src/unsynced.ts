/**
 * Which todos hold a change the server has not acknowledged yet. The plugin
 * counts pending events but does not list them per document, so the app
 * keeps the list: a todo joins it when the app writes it, and leaves when a
 * push that the server acknowledged names it (`sent$`), or when nothing is
 * pending any more. Kept in localStorage, so a reload and the other tabs
 * (only the leading tab sees `sent$`) show the same marks.
 */
export class UnsyncedMarks {
  private ids: Set<string>;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly key: string) {
    this.ids = this.read();
    window.addEventListener('storage', (event) => {
      if (event.key !== this.key) return;
      this.ids = this.read();
      this.changed();
    });
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  get size(): number {
    return this.ids.size;
  }

  /** The app wrote this todo: it waits for the server. */
  add(id: string): void {
    if (this.ids.has(id)) return;
    this.ids.add(id);
    this.save();
  }

  /** The server acknowledged changes of these todos. */
  acknowledged(ids: Iterable<string>): void {
    let any = false;
    for (const id of ids) any = this.ids.delete(id) || any;
    if (any) this.save();
  }

  /** Nothing waits to be pushed: every mark is stale. */
  clear(): void {
    if (this.ids.size === 0) return;
    this.ids.clear();
    this.save();
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  private read(): Set<string> {
    try {
      return new Set(JSON.parse(localStorage.getItem(this.key) ?? '[]') as string[]);
    } catch {
      return new Set();
    }
  }

  private save(): void {
    localStorage.setItem(this.key, JSON.stringify([...this.ids]));
    this.changed();
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }
}
