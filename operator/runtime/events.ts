import { randomBytes } from "node:crypto";
import { ApiError, resourcePath, type KubeClient, type KubeObject } from "../../kube/client.ts";

export type EventType = "Normal" | "Warning";

interface CoreEvent {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  count?: number;
  lastTimestamp?: string;
}

/**
 * Records core/v1 Events on an object, as `kubectl describe` shows them. A repeat of the same
 * reason and message on the same object within ten minutes bumps the count of the existing
 * Event instead of creating another, as client-go's recorder does.
 */
export class EventRecorder {
  private readonly recent = new Map<string, { name: string; namespace: string; count: number; at: number }>();

  constructor(
    private readonly client: KubeClient,
    private readonly component: string,
    private readonly log?: (message: string) => void,
  ) {}

  async record(object: KubeObject, type: EventType, reason: string, message: string): Promise<void> {
    const namespace = object.metadata?.namespace ?? "default";
    const key = `${object.metadata?.uid}/${type}/${reason}/${message}`;
    const now = new Date();
    const nowText = now.toISOString();
    try {
      const previous = this.recent.get(key);
      if (previous && now.getTime() - previous.at < 10 * 60_000) {
        previous.count += 1;
        previous.at = now.getTime();
        await this.client.patch<CoreEvent>(resourcePath({ group: "", version: "v1", plural: "events", namespace, name: previous.name }), {
          count: previous.count,
          lastTimestamp: nowText,
        });
        return;
      }
      const name = `${object.metadata?.name}.${now.getTime().toString(16)}${randomBytes(2).toString("hex")}`;
      await this.client.create(resourcePath({ group: "", version: "v1", plural: "events", namespace }), {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name, namespace },
        involvedObject: {
          apiVersion: object.apiVersion,
          kind: object.kind,
          name: object.metadata?.name,
          namespace,
          uid: object.metadata?.uid,
          resourceVersion: object.metadata?.resourceVersion,
        },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: this.component },
        reportingComponent: this.component,
        reportingInstance: this.component,
        firstTimestamp: nowText,
        lastTimestamp: nowText,
        count: 1,
      });
      this.recent.set(key, { name, namespace, count: 1, at: now.getTime() });
      if (this.recent.size > 4096) this.recent.delete(this.recent.keys().next().value as string);
    } catch (error) {
      // Events are best effort: a failure to record one never fails a reconcile.
      if (!(error instanceof ApiError && error.status === 404)) this.log?.(`event ${reason} on ${namespace}/${object.metadata?.name}: ${(error as Error).message}`);
      this.recent.delete(key);
    }
  }
}
