/**
 * Creations a controller made and its cache has not shown yet, per job key, as the Job
 * controller's ControllerExpectations: a reconcile that runs before the informer delivers a
 * pod it just created must not conclude the pod is missing (and create another). A key is
 * satisfied once every expected name was observed, or once the timeout passed (a lost watch
 * event must not stall the job for good).
 */
export class Expectations {
  private readonly pending = new Map<string, { names: Set<string>; since: number }>();

  constructor(
    private readonly timeoutMs = 5 * 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Call before the create request. */
  expectCreation(key: string, name: string): void {
    const entry = this.pending.get(key) ?? { names: new Set<string>(), since: this.now() };
    entry.names.add(name);
    entry.since = this.now();
    this.pending.set(key, entry);
  }

  /** The informer showed the object, or the create failed so it will never show: stop waiting for it. */
  observed(key: string, name: string): void {
    const entry = this.pending.get(key);
    if (!entry) return;
    entry.names.delete(name);
    if (entry.names.size === 0) this.pending.delete(key);
  }

  /** Milliseconds until the key is satisfied by timeout; 0 when it is satisfied now. */
  pendingMs(key: string): number {
    const entry = this.pending.get(key);
    if (!entry) return 0;
    const left = entry.since + this.timeoutMs - this.now();
    if (left > 0) return left;
    this.pending.delete(key);
    return 0;
  }

  forget(key: string): void {
    this.pending.delete(key);
  }
}
