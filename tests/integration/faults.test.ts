// Faults a production operator meets, against the real API server: the API server restarting
// under it, its Lease taken by another holder, and its process SIGKILLed mid-run. The
// trainer is the scripted stand-in (tests/fixtures/scripted-trainer.ts: `ok-*` jobs train 6
// short steps), so each scenario takes seconds of training and the time goes to the fault.
import type { V1Pod } from "@kubernetes/client-node";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { CRD_FILE, type FineTuneJob } from "../../api/index.ts";
import { KubeClient, resourcePath } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { startControlPlane } from "../../localcluster/controlplane.ts";
import { kubeletTls, makePki, type Pki } from "../../localcluster/pki.ts";
import { PodRunner } from "../../localcluster/pod-runner.ts";
import { freePort } from "../../localcluster/process.ts";
import { DefaultServiceAccounts } from "../../localcluster/service-accounts.ts";
import { startOperator, type OperatorOptions } from "../../operator/operator.ts";
import { cluster, eventually } from "./harness.ts";
import { leasePath, takeLease } from "./leases.ts";
import { jobsPath, SCRIPTED_IMAGE, scriptedJobManifest } from "./operator-harness.ts";

const repo = process.cwd();

/** One namespace of one API server, prepared for an operator: the CRD, S3 credentials, a pod runner and progress TLS. */
interface Site {
  client: KubeClient;
  kubeconfig: string;
  namespace: string;
  runner: PodRunner;
  pki: Pki;
  progressPort: number;
}

async function prepareSite(kubeconfig: string, kubeletPkiDir: string, prefix: string): Promise<Site> {
  const client = KubeClient.load(kubeconfig);
  const apply = spawnSync(cluster().kubectl, ["--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", CRD_FILE], { encoding: "utf8", timeout: 60_000 });
  expect(apply.status, apply.stderr).toBe(0);
  const namespace = `${prefix}-${randomBytes(3).toString("hex")}`;
  await client.create(resourcePath({ group: "", version: "v1", plural: "namespaces" }), { apiVersion: "v1", kind: "Namespace", metadata: { name: namespace } });
  // A CRD just applied serves requests only once established.
  await eventually("the FineTuneJob API", async () => (await client.list(jobsPath(namespace))) && true);
  const { s3 } = cluster();
  await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name: "s3-creds" },
    stringData: { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
  });
  const dir = await mkdtemp(path.join(os.tmpdir(), `kubetune-${prefix}-`));
  await chmod(dir, 0o755);
  const pki = await makePki(path.join(dir, "pki"));
  const runner = new PodRunner({
    client,
    workDir: path.join(dir, "pods"),
    nodeName: `node-${namespace}`,
    namespaces: [namespace],
    capacity: { cpu: "64", memory: "128Gi", gpus: 0 },
    kubeletTls: kubeletTls(kubeletPkiDir),
    images: { [SCRIPTED_IMAGE]: { entrypoint: [process.execPath, "--import", path.join(repo, "node_modules/tsx/dist/esm/index.mjs"), path.join(repo, "tests/fixtures/scripted-trainer.ts")] } },
  });
  await runner.start();
  return { client, kubeconfig, namespace, runner, pki, progressPort: await freePort() };
}

/** The operator of a site, in this process. */
async function operatorOptions(site: Site, overrides: Partial<OperatorOptions> = {}): Promise<OperatorOptions> {
  const { s3 } = cluster();
  return {
    kubeconfig: site.kubeconfig,
    namespaces: [site.namespace],
    probeAddress: "127.0.0.1:0",
    progressAddress: `127.0.0.1:${site.progressPort}`,
    progressTls: { certFile: site.pki.servingCert, keyFile: site.pki.servingKey },
    leaderElection: { enabled: false, namespace: site.namespace, name: "kubetune-operator" },
    concurrency: 4,
    log: () => {},
    settings: {
      defaultImage: SCRIPTED_IMAGE,
      progressUrl: `https://127.0.0.1:${site.progressPort}`,
      progressCa: await readFile(site.pki.caCert, "utf8"),
      defaultStorage: { endpoint: s3.endpoint, region: "us-east-1", forcePathStyle: true },
      terminationGraceSeconds: 10,
      preflight: false,
      imagePullTimeoutSeconds: 60,
      unschedulableTimeoutSeconds: 120,
      retryBackoffBaseSeconds: 1,
      retryBackoffMaxSeconds: 5,
    },
    ...overrides,
  };
}

/** The operator of a site as deployed: its own process, started with the CLI's flags. */
function spawnOperator(site: Site, probePort: number): ChildProcess & { output: () => string } {
  const child = spawn(
    process.execPath,
    [
      "bin/kubetune.mjs",
      "operator",
      `--kubeconfig=${site.kubeconfig}`,
      `--namespaces=${site.namespace}`,
      `--probe-address=127.0.0.1:${probePort}`,
      `--progress-address=127.0.0.1:${site.progressPort}`,
      `--progress-url=https://127.0.0.1:${site.progressPort}`,
      `--progress-tls-cert=${site.pki.servingCert}`,
      `--progress-tls-key=${site.pki.servingKey}`,
      `--progress-ca=${site.pki.caCert}`,
      `--trainer-image-cpu=${SCRIPTED_IMAGE}`,
      "--no-preflight",
      "--retry-backoff=1",
      "--termination-grace=10",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  return Object.assign(child, { output: () => output });
}

async function createJobs(site: Site, names: string[]): Promise<void> {
  for (const name of names) await site.client.create(jobsPath(site.namespace), scriptedJobManifest(name, site.namespace));
}

async function waitForSuccess(site: Site, names: string[], timeoutMs = 120_000): Promise<void> {
  for (const name of names) {
    const job = await eventually(
      `job ${name} to finish`,
      async () => {
        const current = await site.client.get<FineTuneJob>(jobsPath(site.namespace, name));
        return current.status?.phase === "Succeeded" || current.status?.phase === "Failed" ? current : undefined;
      },
      timeoutMs,
    );
    expect(job.status?.phase, `${name}: ${JSON.stringify(job.status?.conditions)}`).toBe("Succeeded");
  }
}

/** Every trainer pod the API server holds for the site's jobs, by job name. */
async function trainerPodsByJob(site: Site): Promise<Record<string, string[]>> {
  const pods = await site.client.list<V1Pod>(resourcePath({ group: "", version: "v1", plural: "pods", namespace: site.namespace }), { labelSelector: "app.kubernetes.io/component=trainer" });
  const byJob: Record<string, string[]> = {};
  for (const pod of pods.items) (byJob[pod.metadata!.labels!["kubetune.io/job-name"]!] ??= []).push(pod.metadata!.name!);
  for (const names of Object.values(byJob)) names.sort();
  return byJob;
}

const onePodEach = (names: string[]) => Object.fromEntries(names.map((name) => [name, [`${name}-train-1`]]));

describe("operator faults", () => {
  it("keeps reconciling after the API server restarts mid-run: every job completes, each with one trainer pod", async () => {
    const binaries = await resolveBinaries(["kube-apiserver", "etcd"]);
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-fault-apiserver-"));
    const controlPlane = await startControlPlane({ dir, kubeApiserver: binaries["kube-apiserver"], etcd: binaries.etcd });
    // Pods need their namespace's default ServiceAccount, which a control plane without controllers does not make.
    const serviceAccounts = new DefaultServiceAccounts(KubeClient.load(controlPlane.kubeconfig));
    let site: Site | undefined;
    let operator: Awaited<ReturnType<typeof startOperator>> | undefined;
    try {
      await serviceAccounts.start();
      site = await prepareSite(controlPlane.kubeconfig, path.join(dir, "pki"), "apiserver-restart");
      operator = await startOperator(await operatorOptions(site));
      const before = ["ok-before-1", "ok-before-2", "ok-before-3"];
      await createJobs(site, before);
      await eventually("a trainer pod", async () => (Object.keys(await trainerPodsByJob(site!)).length > 0 ? true : undefined));
      await controlPlane.restartApiserver();
      // Jobs created after the restart reach the operator only through watches re-opened on the new server.
      const after = ["ok-after-1", "ok-after-2"];
      await createJobs(site, after);
      await waitForSuccess(site, [...before, ...after]);
      expect(await trainerPodsByJob(site)).toEqual(onePodEach([...before, ...after]));
      await eventually("the operator to be ready again", async () => (operator!.controller.isHealthy() ? true : undefined));
    } finally {
      await operator?.stop();
      await site?.runner.stop();
      await serviceAccounts.stop();
      await controlPlane.stop();
    }
  });

  it("a leader whose lease is taken stops acting and fails /healthz; its replacement takes over and reconciles", async () => {
    const site = await prepareSite(cluster().kubeconfig, path.join(cluster().dir, "pki"), "lease-fault");
    const election = { enabled: true, namespace: site.namespace, name: "kubetune-operator", leaseDurationSeconds: 4, renewDeadlineSeconds: 3, retryPeriodSeconds: 0.5 };
    const first = await startOperator(await operatorOptions(site, { leaderElection: { ...election, identity: "replica-a" } }));
    let replacement: Awaited<ReturnType<typeof startOperator>> | undefined;
    try {
      await eventually("replica-a to lead", async () => (first.isLeader() ? true : undefined));
      await createJobs(site, ["ok-before"]);
      await waitForSuccess(site, ["ok-before"]);

      // Another holder takes the lease and never renews it: it expires 3 s after the replacement first sees it.
      await takeLease(leasePath(site.namespace, "kubetune-operator"), "intruder", 3);
      const reason = await Promise.race([first.fatal, new Promise<string>((resolve) => setTimeout(() => resolve("no fatal report"), 20_000))]);
      expect(reason).toBe(`lost leadership of the lease ${site.namespace}/kubetune-operator (the lease ${site.namespace}/kubetune-operator is held by intruder now); the process must restart to rejoin the election`);
      expect(first.isLeader()).toBe(false);
      expect((await fetch(`http://127.0.0.1:${first.probePort}/healthz`)).status).toBe(503);
      // It acts no more: a job created now is left alone.
      const reconciles = first.controller.reconciles;
      await createJobs(site, ["ok-after"]);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      expect((await site.client.get<FineTuneJob>(jobsPath(site.namespace, "ok-after"))).status).toBeUndefined();
      expect(first.controller.reconciles).toBe(reconciles);

      // The process exits; the Deployment starts a replacement, which joins the election afresh.
      await first.stop();
      replacement = await startOperator(await operatorOptions(site, { leaderElection: { ...election, identity: "replica-a-restarted" } }));
      await waitForSuccess(site, ["ok-after"]);
      expect(replacement.isLeader()).toBe(true);
      expect(await trainerPodsByJob(site)).toEqual(onePodEach(["ok-after", "ok-before"]));
    } finally {
      await first.stop();
      await replacement?.stop();
      await site.runner.stop();
    }
  });

  it("a SIGKILLed operator's replacement adopts its work: no duplicate pod, no lost job", async () => {
    const site = await prepareSite(cluster().kubeconfig, path.join(cluster().dir, "pki"), "sigkill");
    const probePort = await freePort();
    const names = Array.from({ length: 6 }, (_, index) => `ok-kill-${index}`);
    let operator = spawnOperator(site, probePort);
    try {
      await eventually("the operator to be ready", async () => ((await fetch(`http://127.0.0.1:${probePort}/readyz`)).status === 200 ? true : undefined), 60_000);
      await createJobs(site, names);
      // Mid-run: some trainer pods exist, and the rest of the work is the replacement's.
      await eventually("the first trainer pods", async () => (Object.keys(await trainerPodsByJob(site)).length >= 2 ? true : undefined));
      const killed = new Promise((resolve) => operator.once("exit", resolve));
      operator.kill("SIGKILL");
      await killed;
      operator = spawnOperator(site, probePort);
      await waitForSuccess(site, names, 180_000);
      expect(await trainerPodsByJob(site), operator.output()).toEqual(onePodEach(names));
      for (const name of names) expect((await site.client.get<FineTuneJob>(jobsPath(site.namespace, name))).status?.attempts).toBe(1);
    } finally {
      const exited = new Promise((resolve) => (operator.exitCode === null ? operator.once("exit", resolve) : resolve(undefined)));
      operator.kill("SIGTERM");
      await exited;
      await site.runner.stop();
    }
  });
});
