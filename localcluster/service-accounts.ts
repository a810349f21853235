import { ApiError, resourcePath, type KubeClient } from "../kube/client.ts";
import { Informer } from "../kube/informer.ts";

/**
 * Creates the `default` ServiceAccount in every namespace, the one job of
 * kube-controller-manager's service-account controller that pods need: the API server's
 * ServiceAccount admission refuses pods whose account does not exist.
 */
export class DefaultServiceAccounts {
  private readonly namespaces: Informer<{ metadata?: { name?: string; deletionTimestamp?: string } }>;

  constructor(
    private readonly client: KubeClient,
    log?: (message: string) => void,
  ) {
    this.namespaces = new Informer(client, { path: "/api/v1/namespaces", log });
    this.namespaces.on({ add: (namespace) => void this.ensure(namespace.metadata?.name, namespace.metadata?.deletionTimestamp).catch((error: unknown) => log?.(`default service account: ${(error as Error).message}`)) });
  }

  start(): Promise<void> {
    return this.namespaces.start();
  }

  stop(): Promise<void> {
    return this.namespaces.stop();
  }

  private async ensure(namespace: string | undefined, deleting: string | undefined): Promise<void> {
    if (!namespace || deleting) return;
    try {
      await this.client.create(resourcePath({ group: "", version: "v1", plural: "serviceaccounts", namespace }), {
        apiVersion: "v1",
        kind: "ServiceAccount",
        metadata: { name: "default", namespace },
      });
    } catch (error) {
      if (!(error instanceof ApiError && (error.status === 409 || error.status === 403))) throw error;
    }
  }
}
