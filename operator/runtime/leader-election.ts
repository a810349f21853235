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

/**
 * Leader election on a coordination.k8s.io Lease, as client-go does it: the holder renews
 * the lease every retry period; another replica takes it over only once it has not been
 * renewed for a whole lease duration; every write is conditional on the resourceVersion read,
 * so two replicas can never both believe they hold it. A leader that cannot renew within the
 * renew deadline stops leading before anyone else may take over (renew deadline < duration).
 */
export class LeaderElector {
  private leading = false;
  private stopped = false;
  private loop?: Promise<void>;
  private lastRenew = 0;
  private wake?: () => void;
  /** The lease record last seen (its resourceVersion) and when, by this process's clock. */
  private observedVersion?: string;
  private observedAt = 0;

  constructor(private readonly options: LeaderElectionOptions) {}

  isLeader(): boolean {
    return this.leading;
  }

  /**
   * Runs until stop(): calls onStartedLeading when the lease is won and onStoppedLeading if
   * it is lost.
   */
  start(callbacks: { onStartedLeading: () => void; onStoppedLeading: () => void }): void {
    const retryMs = (this.options.retryPeriodSeconds ?? 2) * 1000;
    const renewDeadlineMs = (this.options.renewDeadlineSeconds ?? 10) * 1000;
    this.loop = (async () => {
      while (!this.stopped) {
        let held = false;
        try {
          held = await this.tryAcquireOrRenew();
        } catch (error) {
          this.options.log?.(`leader election: ${(error as Error).message}`);
        }
        if (held) {
          this.lastRenew = Date.now();
          if (!this.leading) {
            this.leading = true;
            this.options.log?.(`leader election: ${this.options.identity} is now the leader`);
            callbacks.onStartedLeading();
          }
        } else if (this.leading && Date.now() - this.lastRenew > renewDeadlineMs) {
          this.leading = false;
          this.options.log?.(`leader election: ${this.options.identity} lost the lease`);
          callbacks.onStoppedLeading();
        }
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, retryMs).unref();
        });
      }
    })();
  }

  /** Stops competing and, if leading, releases the lease so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.options.client.get<Lease>(this.path());
      if (lease.spec.holderIdentity === this.options.identity) {
        await this.options.client.replace(this.path(), {
          ...lease,
          spec: { ...lease.spec, holderIdentity: null, renewTime: null, acquireTime: null, leaseDurationSeconds: 1 },
        });
      }
    } catch (error) {
      this.options.log?.(`leader election: releasing the lease failed: ${(error as Error).message}`);
    }
  }

  private path(name?: string): string {
    return resourcePath({ group: "coordination.k8s.io", version: "v1", plural: "leases", namespace: this.options.namespace, name: name ?? this.options.name });
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { client, identity } = this.options;
    const duration = this.options.leaseDurationSeconds ?? 15;
    const now = new Date();
    const nowText = now.toISOString().replace(/Z$/, "000Z");
    let lease: Lease;
    try {
      lease = await client.get<Lease>(this.path());
    } catch (error) {
      if (!isNotFound(error)) throw error;
      try {
        await client.create(this.path(""), {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name: this.options.name, namespace: this.options.namespace },
          spec: { holderIdentity: identity, leaseDurationSeconds: duration, acquireTime: nowText, renewTime: nowText, leaseTransitions: 0 },
        });
        return true;
      } catch (createError) {
        if (createError instanceof ApiError && createError.status === 409) return false;
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
    if (holder && holder !== identity && !expired) return false;
    const takingOver = holder !== identity;
    try {
      await client.replace(this.path(), {
        ...lease,
        spec: {
          holderIdentity: identity,
          leaseDurationSeconds: duration,
          acquireTime: takingOver ? nowText : lease.spec.acquireTime,
          renewTime: nowText,
          leaseTransitions: (lease.spec.leaseTransitions ?? 0) + (takingOver && holder ? 1 : 0),
        },
      });
      return true;
    } catch (error) {
      // Someone else wrote the lease since we read it: they won this round.
      if (error instanceof ApiError && error.status === 409) return false;
      throw error;
    }
  }
}
