/** A running count that can be awaited: "resolve once at least n writes have arrived". */
export class Counter {
  private count = 0;
  private waiters: { target: number; resolve(): void }[] = [];

  get value(): number {
    return this.count;
  }

  add(n: number): void {
    this.count += n;
    if (this.waiters.length === 0) return;
    this.waiters = this.waiters.filter((waiter) => {
      if (this.count < waiter.target) return true;
      waiter.resolve();
      return false;
    });
  }

  /** Resolves once the count reaches `target`. */
  reach(target: number): Promise<void> {
    if (this.count >= target) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ target, resolve }));
  }
}
