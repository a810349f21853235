import { ApiError, isNotFound, resourcePath, type KubeClient } from "../../kube/client.ts";

interface Lease {
  apiVersion: "coordination.k8s.io/v1";
  kind: "Lease";
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string | null;
    leaseDurationSeconds?: number;
    acquireTime?: string | null;
    renewTime?: string | null;
    leaseTransitions?: number;
  };
}

export interface LeaderElectionOptions {
  client: KubeClient;
  namespace: string;
  name: string;
  /** This replica's identity, e.g. the pod name. */
  identity: string;
  /** A lease not renewed for this long may be taken over. */
  leaseDurationSeconds?: number;
  /** Stop leading if the lease could not be renewed for this long. */
  renewDeadlineSeconds?: number;
  /** How often to try to acquire or renew. */
  retryPeriodSeconds?: number;
  log?: (message: string) => void;
}

/** What one acquire-or-renew round found: whether this replica holds the lease, and who does. */
interface Round {
  held: boolean;
  holder?: string | null;
}

/**
 * Leader election on a coordination.k8s.io Lease, as client-go does it: the holder renews
 * the lease every retry period; another replica takes it over only once it has not been
 * renewed for a whole lease duration; every write is conditional on the resourceVersion read,
 * so two replicas can never both believe they hold it. A leader that has not renewed within
 * the renew deadline stops leading before anyone else may take over (renew deadline < lease
 * duration): a timer enforces it, so a renew request that hangs cannot keep an old leader
 * acting. Leadership, once lost, is not sought again: the owner exits and its restart joins
 * the election afresh (as controller-runtime's manager does), since state built while leading
 * cannot be trusted after another replica has acted.
 */
export class LeaderElector {
  private leading = false;
  private stopped = false;
  private loop?: Promise<void>;
  private wake?: () => void;
  private deadlineTimer?: NodeJS.Timeout;
  /** When leadership ends unless renewed before, by Date.now(). */
  private deadlineAt?: number;
  private onStoppedLeading?: (reason: string) => void;
  /** The lease record last seen (its resourceVersion) and when, by this process's clock. */
  private observedVersion?: string;
  private observedAt = 0;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;

  constructor(private readonly options: LeaderElectionOptions) {
    this.leaseDurationMs = (options.leaseDurationSeconds ?? 15) * 1000;
    this.renewDeadlineMs = (options.renewDeadlineSeconds ?? 10) * 1000;
    this.retryPeriodMs = (options.retryPeriodSeconds ?? 2) * 1000;
    // client-go's rules: a leader must give up before others may take over, and must get more than one try at renewing.
    if (!(this.renewDeadlineMs < this.leaseDurationMs)) {
      throw new Error(`leader election: renewDeadlineSeconds (${this.renewDeadlineMs / 1000}) must be less than leaseDurationSeconds (${this.leaseDurationMs / 1000})`);
    }
    if (!(this.renewDeadlineMs > 1.2 * this.retryPeriodMs)) {
      throw new Error(`leader election: renewDeadlineSeconds (${this.renewDeadlineMs / 1000}) must be more than 1.2 x retryPeriodSeconds (${this.retryPeriodMs / 1000})`);
    }
  }

  isLeader(): boolean {
    return this.leading;
  }

  /**
   * Competes until stop(): calls onStartedLeading when the lease is won, and onStoppedLeading
   * with the reason if it is lost (not renewed within the renew deadline, or found held by
   * another replica); after a loss it stops competing.
   */
  start(callbacks: { onStartedLeading: () => void; onStoppedLeading: (reason: string) => void }): void {
    this.onStoppedLeading = callbacks.onStoppedLeading;
    this.loop = (async () => {
      while (!this.stopped) {
        const attemptStartedAt = Date.now();
        // No request may outlive the leader's deadline; a follower's attempts are bounded the same way.
        const timeoutMs = this.leading && this.deadlineAt !== undefined ? Math.max(1, this.deadlineAt - attemptStartedAt) : this.renewDeadlineMs;
        let round: Round | undefined;
        try {
          round = await this.tryAcquireOrRenew(timeoutMs);
        } catch (error) {
          this.options.log?.(`leader election: ${(error as Error).message}`);
        }
        if (this.stopped) break;
        if (round?.held) {
          // The lease now runs from about when this attempt was sent: the deadline counts from then, not from the answer.
          this.armDeadline(attemptStartedAt + this.renewDeadlineMs);
          if (!this.leading) {
            this.leading = true;
            this.options.log?.(`leader election: ${this.options.identity} is now the leader`);
            callbacks.onStartedLeading();
          }
        } else if (this.leading && round?.holder && round.holder !== this.options.identity) {
          this.lose(`the lease ${this.options.namespace}/${this.options.name} is held by ${round.holder} now`);
        }
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, this.retryPeriodMs).unref();
        });
      }
    })();
  }

  /** Stops competing and, if leading, releases the lease so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    // A graceful stop is not a loss: the owner stopped acting before calling this.
    clearTimeout(this.deadlineTimer);
    this.wake?.();
    // A round in flight ends within its request timeout; a client that ignores it must not hold shutdown for ever.
    await Promise.race([this.loop, new Promise((resolve) => setTimeout(resolve, this.renewDeadlineMs).unref())]);
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.options.client.get<Lease>(this.path(), undefined, { timeoutMs: this.renewDeadlineMs });
      if (lease.spec.holderIdentity === this.options.identity) {
        await this.options.client.replace(
          this.path(),
          { ...lease, spec: { ...lease.spec, holderIdentity: null, renewTime: null, acquireTime: null, leaseDurationSeconds: 1 } },
          undefined,
          { timeoutMs: this.renewDeadlineMs },
        );
      }
    } catch (error) {
      this.options.log?.(`leader election: releasing the lease failed: ${(error as Error).message}`);
    }
  }

  private armDeadline(at: number): void {
    clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    this.deadlineTimer = setTimeout(() => this.lose(`the lease was not renewed within the renew deadline (${this.renewDeadlineMs / 1000}s)`), Math.max(0, at - Date.now()));
    this.deadlineTimer.unref();
  }

  private lose(reason: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.stopped = true;
    clearTimeout(this.deadlineTimer);
    this.wake?.();
    this.options.log?.(`leader election: ${this.options.identity} lost leadership: ${reason}`);
    this.onStoppedLeading?.(reason);
  }

  private path(name?: string): string {
    return resourcePath({ group: "coordination.k8s.io", version: "v1", plural: "leases", namespace: this.options.namespace, name: name ?? this.options.name });
  }

  private async tryAcquireOrRenew(timeoutMs: number): Promise<Round> {
    const { client, identity } = this.options;
    const request = { timeoutMs };
    const duration = this.leaseDurationMs / 1000;
    const now = new Date();
    const nowText = now.toISOString().replace(/Z$/, "000Z");
    let lease: Lease;
    try {
      lease = await client.get<Lease>(this.path(), undefined, request);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      try {
        await client.create(
          this.path(""),
          {
            apiVersion: "coordination.k8s.io/v1",
            kind: "Lease",
            metadata: { name: this.options.name, namespace: this.options.namespace },
            spec: { holderIdentity: identity, leaseDurationSeconds: duration, acquireTime: nowText, renewTime: nowText, leaseTransitions: 0 },
          },
          undefined,
          request,
        );
        return { held: true, holder: identity };
      } catch (createError) {
        if (createError instanceof ApiError && createError.status === 409) return { held: false };
        throw createError;
      }
    }
    const holder = lease.spec.holderIdentity;
    // As client-go: the lease expires a duration after this process last saw its record change, by the local clock.
    // The holder's renewTime comes from the holder's clock, and a skewed one must not hand the lease over early.
    if (lease.metadata.resourceVersion !== this.observedVersion) {
      this.observedVersion = lease.metadata.resourceVersion;
      this.observedAt = now.getTime();
    }
    const expired = !lease.spec.renewTime || this.observedAt + (lease.spec.leaseDurationSeconds ?? duration) * 1000 < now.getTime();
    if (holder && holder !== identity && !expired) return { held: false, holder };
    const takingOver = holder !== identity;
    try {
      await client.replace(
        this.path(),
        {
          ...lease,
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds: duration,
            acquireTime: takingOver ? nowText : lease.spec.acquireTime,
            renewTime: nowText,
            leaseTransitions: (lease.spec.leaseTransitions ?? 0) + (takingOver && holder ? 1 : 0),
          },
        },
        undefined,
        request,
      );
      return { held: true, holder: identity };
    } catch (error) {
      // Someone else wrote the lease since we read it: they won this round.
      if (error instanceof ApiError && error.status === 409) return { held: false };
      throw error;
    }
  }
}
