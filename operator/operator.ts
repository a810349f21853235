import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { KubeClient } from "../kube/client.ts";
import { FineTuneJobController } from "./finetunejob/controller.ts";
import type { DecideSettings } from "./finetunejob/decide.ts";
import { OperatorMetrics } from "./metrics.ts";
import { ProgressServer } from "./progress/server.ts";
import { EventRecorder } from "./runtime/events.ts";
import { LeaderElector } from "./runtime/leader-election.ts";

export interface OperatorOptions {
  kubeconfig?: string;
  namespaces: string[];
  /** host:port of /healthz, /readyz and /metrics. */
  probeAddress: string;
  /** host:port of the HTTPS progress endpoint. */
  progressAddress: string;
  progressTls: { certFile: string; keyFile: string };
  /** File with the key progress tokens are derived from; shared by replicas and restarts. */
  progressTokenKeyFile?: string;
  leaderElection: { enabled: boolean; namespace: string; name: string; identity?: string };
  concurrency: number;
  settings: DecideSettings;
  log?: (message: string) => void;
}

export interface RunningOperator {
  controller: FineTuneJobController;
  progress: ProgressServer;
  probePort: number;
  progressPort: number;
  isLeader(): boolean;
  /** Graceful shutdown: stop acting, release the lease, close servers. */
  stop(): Promise<void>;
}

function splitAddress(address: string): { host: string; port: number } {
  const index = address.lastIndexOf(":");
  return { host: address.slice(0, index) || "0.0.0.0", port: Number(address.slice(index + 1)) };
}

/** Starts the operator: caches, probes and metrics at once; reconciling only while leader. */
export async function startOperator(options: OperatorOptions): Promise<RunningOperator> {
  const log = options.log ?? ((message: string) => console.log(`${new Date().toISOString()} ${message}`));
  const client = KubeClient.load(options.kubeconfig);
  const metrics = new OperatorMetrics();
  metrics.trackApiRequests(client.requestCounts);
  const tokenKey = options.progressTokenKeyFile ? readFileSync(options.progressTokenKeyFile) : randomBytes(32);
  if (!options.progressTokenKeyFile) log("no --progress-token-key-file: using a random key; trainers of running jobs must re-register after a restart");
  const controller = new FineTuneJobController({
    client,
    settings: options.settings,
    tokenKey,
    metrics,
    events: new EventRecorder(client, "kubetune-operator", log),
    namespaces: options.namespaces,
    concurrency: options.concurrency,
    log,
  });
  const progress = new ProgressServer({
    client,
    key: tokenKey,
    tls: { cert: readFileSync(options.progressTls.certFile), key: readFileSync(options.progressTls.keyFile) },
    lookup: (namespace, name) => controller.job(namespace, name),
    metrics,
    log,
  });
  const elector = options.leaderElection.enabled
    ? new LeaderElector({
        client,
        namespace: options.leaderElection.namespace,
        name: options.leaderElection.name,
        // In a pod HOSTNAME is the pod's name (also where the local pod runner runs it as a process).
        identity: options.leaderElection.identity ?? `${process.env.HOSTNAME || os.hostname()}-${randomBytes(3).toString("hex")}`,
        log,
      })
    : undefined;

  const probes = http.createServer((request, response) => {
    if (request.url === "/healthz") return void response.writeHead(200).end("ok\n");
    if (request.url === "/readyz") {
      const ready = controller.isHealthy();
      return void response.writeHead(ready ? 200 : 503).end(ready ? "ok\n" : "informers not synced or not watching\n");
    }
    if (request.url === "/metrics") {
      void metrics.registry.metrics().then((text) => response.writeHead(200, { "content-type": metrics.registry.contentType }).end(text));
      return;
    }
    response.writeHead(404).end("not found\n");
  });
  const probeAddress = splitAddress(options.probeAddress);
  await new Promise<void>((resolve) => probes.listen(probeAddress.port, probeAddress.host, resolve));
  const progressAddress = splitAddress(options.progressAddress);
  const progressPort = await progress.listen(progressAddress.port, progressAddress.host);

  await controller.sync();
  log(`caches synced: ${controller.allJobs().length} FineTuneJobs`);
  let stopped = false;
  if (elector) {
    metrics.leader.set(0);
    elector.start({
      onStartedLeading: () => {
        metrics.leader.set(1);
        controller.start();
      },
      onStoppedLeading: () => {
        // Another replica may act now: stop at once rather than risk two writers.
        log("lost leadership; stopping");
        metrics.leader.set(0);
        void controller.stop();
      },
    });
  } else {
    metrics.leader.set(1);
    controller.start();
  }

  return {
    controller,
    progress,
    probePort: (probes.address() as AddressInfo).port,
    progressPort,
    isLeader: () => (elector ? elector.isLeader() : true),
    async stop() {
      if (stopped) return;
      stopped = true;
      await controller.stop();
      await elector?.stop();
      await progress.close();
      probes.closeAllConnections();
      await new Promise<void>((resolve) => probes.close(() => resolve()));
    },
  };
}
