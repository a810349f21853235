import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { KubeClient } from "../kube/client.ts";
import { FineTuneJobController } from "./finetunejob/controller.ts";
import type { DecideSettings } from "./finetunejob/decide.ts";
import { PROGRESS_AUDIENCE } from "./finetunejob/pods.ts";
import { MetricsAuthorizer, type MetricsAuthorization } from "./metrics-auth.ts";
import { OperatorMetrics } from "./metrics.ts";
import { ProgressServer } from "./progress/server.ts";
import { TokenReviewer } from "./progress/token-review.ts";
import { QueueController } from "./queue/controller.ts";
import { KueueController } from "./queue/kueue.ts";
import { QueueMetrics } from "./queue/metrics.ts";
import { EventRecorder } from "./runtime/events.ts";
import { LeaderElector } from "./runtime/leader-election.ts";
import { loadOrCreateKeys, servingHosts, ServingCertificate } from "./runtime/serving-keys.ts";

export interface OperatorOptions {
  kubeconfig?: string;
  namespaces: string[];
  /** host:port of /healthz, /readyz and /metrics. */
  probeAddress: string;
  /** host:port of the HTTPS progress endpoint. */
  progressAddress: string;
  /** Certificate and key files of the progress endpoint (cert-manager's Secret, mounted), reread when they change. */
  progressTls?: { certFile: string; keyFile: string };
  /**
   * The Secret the operator keeps its progress CA in: created when its pod's mount of it (`dir`)
   * is empty, never read through the API (runtime/serving-keys.ts).
   */
  keySecret?: { namespace: string; name: string; dir: string };
  /** DNS names and IP addresses the operator's own serving certificate covers besides the progress URL's host. */
  progressCertHosts?: string[];
  /** The Lease; the timings default to client-go's (15 s lease, 10 s renew deadline, 2 s retry period). */
  leaderElection: { enabled: boolean; namespace: string; name: string; identity?: string; leaseDurationSeconds?: number; renewDeadlineSeconds?: number; retryPeriodSeconds?: number };
  /**
   * Serve /metrics on the HTTPS progress port too, behind its TLS (docs/metrics.md): "kubernetes"
   * admits bearer tokens whose user may get the non-resource URL /metrics (TokenReview and
   * SubjectAccessReview, as kube-rbac-proxy), "none" anyone who reaches the port. Unset: not there.
   */
  secureMetrics?: MetricsAuthorization;
  /** Serve /metrics on the plain-HTTP probe port (default true; set false once scrapes use the HTTPS port). */
  metricsOnProbePort?: boolean;
  concurrency: number;
  settings: DecideSettings;
  /**
   * Queueing (docs/queues.md): builtIn runs the FineTuneQueue controller (needs list and watch on
   * the cluster-scoped finetunequeues); kueue makes a Kueue Workload for each job whose queueName
   * is not a FineTuneQueue. Both off by default: without them a job with queueName waits Queued.
   */
  queues?: { builtIn?: boolean; kueue?: boolean };
  log?: (message: string) => void;
}

export interface RunningOperator {
  controller: FineTuneJobController;
  progress: ProgressServer;
  probePort: number;
  progressPort: number;
  isLeader(): boolean;
  /**
   * Resolves, with the reason, when this operator has stopped acting for good and its process
   * must exit so that a restart rejoins the leader election (as controller-runtime's manager
   * exits on lost leadership); /healthz fails from then on. The CLI exits non-zero on it.
   */
  fatal: Promise<string>;
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
  const keys = options.keySecret ? await loadOrCreateKeys({ client, ...options.keySecret, log }) : undefined;
  const serving = options.progressTls
    ? ServingCertificate.fromFiles(options.progressTls.certFile, options.progressTls.keyFile, log)
    : keys
      ? ServingCertificate.fromCa(keys.ca, servingHosts(options.settings.progressUrl, options.progressCertHosts ?? []), log)
      : undefined;
  if (!serving) throw new Error("the progress endpoint needs a certificate: give --progress-tls-cert and --progress-tls-key, or --key-secret");
  // Trainers verify the endpoint against the CA the operator signs with, which is public.
  const settings = keys && !options.progressTls ? { ...options.settings, progressCa: keys.ca.cert } : options.settings;
  // Events yield to a backlog of reconciles: in a burst of new jobs, pods first (controller is assigned below, before
  // any Event is recorded).
  const events: EventRecorder = new EventRecorder(client, "kubetune-operator", log, { yieldWhile: (): boolean => controller.hasBacklog() });
  metrics.trackEvents(events);
  const metricsAuthorizer = new MetricsAuthorizer(client);
  const controller = new FineTuneJobController({
    client,
    settings,
    metrics,
    events,
    namespaces: options.namespaces,
    concurrency: options.concurrency,
    log,
  });
  const queueController = options.queues?.builtIn
    ? new QueueController({ client, jobs: controller.jobs, metrics: new QueueMetrics(metrics.registry), events, kueueEnabled: options.queues.kueue, log })
    : undefined;
  const kueueController = options.queues?.kueue
    ? new KueueController({ client, jobs: controller.jobs, namespaces: options.namespaces, isBuiltInQueue: (name) => queueController?.queues.get(undefined, name) !== undefined, events, log })
    : undefined;
  const queueControllers = [queueController, kueueController].filter((each) => each !== undefined);
  const progress = new ProgressServer({
    client,
    // Trainers present the service account token projected into their pod for this audience (finetunejob/pods.ts).
    tokenReviewer: new TokenReviewer(client, { audiences: [PROGRESS_AUDIENCE] }),
    tls: serving.get(),
    lookup: (namespace, name) => controller.job(namespace, name),
    podsOf: (job) => controller.podsOf(job),
    // Only the leader's caches and metrics count: a follower answers 503 and the trainer retries.
    isLeader: () => (elector ? elector.isLeader() : true),
    metrics,
    events,
    ...(options.secureMetrics
      ? { metricsEndpoint: options.secureMetrics === "kubernetes" ? { authorize: (header: string | undefined) => metricsAuthorizer.authorize(header) } : {} }
      : {}),
    log,
  });
  const elector = options.leaderElection.enabled
    ? new LeaderElector({
        client,
        namespace: options.leaderElection.namespace,
        name: options.leaderElection.name,
        // In a pod HOSTNAME is the pod's name (also where the local pod runner runs it as a process).
        identity: options.leaderElection.identity ?? `${process.env.HOSTNAME || os.hostname()}-${randomBytes(3).toString("hex")}`,
        leaseDurationSeconds: options.leaderElection.leaseDurationSeconds,
        renewDeadlineSeconds: options.leaderElection.renewDeadlineSeconds,
        retryPeriodSeconds: options.leaderElection.retryPeriodSeconds,
        log,
      })
    : undefined;

  // Set once the operator can no longer act (lost leadership): liveness fails until the process exits and is restarted.
  let fatalReason: string | undefined;
  let reportFatal!: (reason: string) => void;
  const fatal = new Promise<string>((resolve) => (reportFatal = resolve));
  const probes = http.createServer((request, response) => {
    if (request.url === "/healthz") return void (fatalReason ? response.writeHead(503).end(`${fatalReason}\n`) : response.writeHead(200).end("ok\n"));
    if (request.url === "/readyz") {
      const ready = controller.isHealthy() && queueControllers.every((each) => each.isHealthy());
      return void response.writeHead(ready ? 200 : 503).end(ready ? "ok\n" : "informers not synced or not watching\n");
    }
    if (request.url === "/metrics" && options.metricsOnProbePort !== false) {
      void metrics.registry.metrics().then((text) => response.writeHead(200, { "content-type": metrics.registry.contentType }).end(text));
      return;
    }
    response.writeHead(404).end("not found\n");
  });
  const probeAddress = splitAddress(options.probeAddress);
  await new Promise<void>((resolve) => probes.listen(probeAddress.port, probeAddress.host, resolve));
  const progressAddress = splitAddress(options.progressAddress);
  const progressPort = await progress.listen(progressAddress.port, progressAddress.host);
  serving.start((pair) => progress.setTls(pair));

  // The queue controllers add their indexes and handlers to the job caches first, then everything fills.
  await Promise.all([controller.sync(), ...queueControllers.map((each) => each.sync())]);
  log(`caches synced: ${controller.allJobs().length} FineTuneJobs`);
  let stopped = false;
  if (elector) {
    metrics.leader.set(0);
    elector.start({
      onStartedLeading: () => {
        metrics.leader.set(1);
        controller.start();
        for (const each of queueControllers) each.start();
      },
      onStoppedLeading: (reason) => {
        // Another replica may act now: stop at once rather than risk two writers. Rejoining in this process would
        // resume from caches and expectations built while leading; a fresh process rebuilds them from the cluster.
        fatalReason = `lost leadership of the lease ${options.leaderElection.namespace}/${options.leaderElection.name} (${reason}); the process must restart to rejoin the election`;
        log(fatalReason);
        metrics.leader.set(0);
        void Promise.all([controller.stop(), ...queueControllers.map((each) => each.stop())]).finally(() => reportFatal(fatalReason!));
      },
    });
  } else {
    metrics.leader.set(1);
    controller.start();
    for (const each of queueControllers) each.start();
  }

  return {
    controller,
    progress,
    probePort: (probes.address() as AddressInfo).port,
    progressPort,
    isLeader: () => (elector ? elector.isLeader() : true),
    fatal,
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all([controller.stop(), ...queueControllers.map((each) => each.stop())]);
      await elector?.stop();
      serving.stop();
      await progress.close();
      // Events recorded by the last reconciles and reports are written before the client closes (bounded wait).
      await events.stop();
      probes.closeAllConnections();
      await new Promise<void>((resolve) => probes.close(() => resolve()));
      client.close();
    },
  };
}
