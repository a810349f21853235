import { spawn } from "node:child_process";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { isNotFound } from "../../kube/client.ts";
import { resolveBinaries } from "../../localcluster/binaries.ts";
import { kubeconfigYaml, startControlPlane, type ControlPlane } from "../../localcluster/controlplane.ts";
import { freePort } from "../../localcluster/process.ts";
import { argoHealth } from "../argocd-health.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectlAsync, runAsync } from "./harness.ts";
import { getJob, jobsPath, scriptedJobManifest, startOperatorHarness, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

/** The real CLI, as a user runs it, against the test cluster unless env says otherwise. */
function kubetune(args: string[], env: Record<string, string> = {}): Promise<{ status: number; stdout: string; stderr: string }> {
  return runAsync(process.execPath, ["bin/kubetune.mjs", ...args], { env: { ...process.env, KUBECONFIG: cluster().kubeconfig, ...env } });
}

describe("the kubetune CLI against a cluster", () => {
  let namespace: string;
  let harness: OperatorHarness;
  let dir: string;

  /** A manifest file for the scripted trainer (the name picks its behaviour). */
  async function manifest(name: string): Promise<string> {
    const file = path.join(dir, `${name}.yaml`);
    const job = scriptedJobManifest(name, namespace) as { metadata: Record<string, unknown> };
    delete job.metadata.namespace;
    await writeFile(file, stringify(job));
    return file;
  }

  beforeAll(async () => {
    namespace = await createNamespace("cli");
    harness = await startOperatorHarness([namespace]);
    dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-cli-test-"));
  });

  afterAll(async () => {
    await harness?.stop();
  });

  it("submit --wait applies a job, follows it to Succeeded and exits 0; applying it again changes nothing", async () => {
    const file = await manifest("ok-cli");
    const submitted = await kubetune(["submit", file, "--wait", "-n", namespace]);
    expect(submitted.stderr).toContain("ok-cli: Running");
    expect(submitted.stdout).toContain("finetunejob.kubetune.io/ok-cli created");
    expect(submitted.stdout).toContain(`finetunejob.kubetune.io/ok-cli Succeeded: outputs in s3://${cluster().s3.bucket}/outputs/ok-cli (loads in PEFT)`);
    expect(submitted.status).toBe(0);
    const applied = await kubeClient().get<{ metadata: { managedFields: { manager: string; operation: string }[] } }>(jobsPath(namespace, "ok-cli"));
    expect(applied.metadata.managedFields).toContainEqual(expect.objectContaining({ manager: "kubetune", operation: "Apply" }));
    const again = await kubetune(["submit", file, "-n", namespace]);
    expect(again.stdout.trim()).toBe("finetunejob.kubetune.io/ok-cli unchanged");
  });

  it("status shows the phase, the loss sparkline, the checkpoint, the outputs and who loads them, and the summary conditions", async () => {
    const status = await kubetune(["status", "ok-cli", "-n", namespace]);
    expect(status.status, status.stderr).toBe(0);
    expect(status.stdout).toContain("Phase:      Succeeded (attempt 1)");
    expect(status.stdout).toMatch(/Progress: {3}step 6\/6 \[#{20}\] 100%/);
    expect(status.stdout).toMatch(/Loss: {7}0\.5000 +[▁▂▃▄▅▆▇█]{3,} /);
    expect(status.stdout).toContain(`Checkpoint: step 3 at s3://${cluster().s3.bucket}/outputs/ok-cli/checkpoints/step-00000003`);
    expect(status.stdout).toContain("Loads in:   PEFT: PeftModel.from_pretrained");
    expect(status.stdout).toMatch(/ {2}Ready +True +Completed/);
    expect(status.stdout).toMatch(/ {2}Normal +PodCreated +\S+ +created trainer pod ok-cli-train-1/);
  });

  it("logs prints the trainer's log, as kubectl logs does through the pod runner's kubelet endpoint", async () => {
    const logs = await kubetune(["logs", "ok-cli", "-n", namespace]);
    expect(logs.status, logs.stderr).toBe(0);
    expect(logs.stdout).toContain("scripted trainer: job ok-cli, attempt 1\n");
    expect(logs.stdout).toContain("done\n");
    expect((await kubectlAsync(["logs", "ok-cli-train-1", "-n", namespace])).stdout).toBe(logs.stdout);
    expect((await kubetune(["logs", "ok-cli", "-n", namespace, "--tail", "1"])).stdout).toBe("done\n");
  });

  it("list and kubectl get ftj show the loss to 4 significant digits and progress in percent", async () => {
    const list = await kubetune(["list", "-n", namespace]);
    expect(list.status, list.stderr).toBe(0);
    const [header, row] = list.stdout.trim().split("\n");
    expect(header!.split(/\s+/)).toEqual(["NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "ETA", "AGE"]);
    expect(row!.split(/\s+/).slice(0, 6)).toEqual(["ok-cli", "Succeeded", "lora", "100%", "0.5000", "0s"]);
    expect((await kubetune(["list", "-A", "-o", "name"])).stdout.split("\n")).toContain("ok-cli");
    const table = (await kubectlAsync(["get", "ftj", "ok-cli", "-n", namespace])).stdout.trim().split("\n")[1]!.split(/\s+/);
    expect(table.slice(0, 6)).toEqual(["ok-cli", "Succeeded", "lora", "100%", "0.5000", "0s"]);
  });

  it("the Argo CD health check reads the finished job as Healthy", async () => {
    expect(argoHealth(await getJob(namespace, "ok-cli"))).toEqual({ status: "Healthy", message: `Succeeded; outputs in s3://${cluster().s3.bucket}/outputs/ok-cli` });
  });

  it("submit --wait exits 1 and says why when the job fails", async () => {
    const failed = await kubetune(["submit", await manifest("bad-cli"), "--wait", "-n", namespace]);
    expect(failed.status).toBe(1);
    expect(failed.stderr).toMatch(/finetunejob\.kubetune\.io\/bad-cli Failed: InvalidDataset: .*train\.jsonl:3: invalid JSON/);
    expect(argoHealth(await getJob(namespace, "bad-cli")).status).toBe("Degraded");
  });

  it("submit refuses an invalid manifest before applying anything", async () => {
    const file = path.join(dir, "invalid.yaml");
    await writeFile(file, (await readFile(await manifest("never-applied"), "utf8")).replace("type: lora", "type: lorax"));
    const refused = await kubetune(["submit", file, "-n", namespace]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain("spec.method.type:");
    expect(refused.stderr).toContain("kubetune: nothing was applied");
    await expect(getJob(namespace, "never-applied")).rejects.toSatisfy(isNotFound);
  });

  it("suspend holds a running job, resume continues it, logs -f follows it, and cancel stops and deletes it", async () => {
    expect((await kubetune(["submit", await manifest("long-cli"), "-n", namespace])).status).toBe(0);
    await eventually("long-cli to report progress", async () => ((await getJob(namespace, "long-cli")).status?.progress?.step ? true : undefined), 60_000);
    const suspended = await kubetune(["suspend", "long-cli", "-n", namespace]);
    expect(suspended.stdout).toContain("finetunejob.kubetune.io/long-cli suspended: the trainer saves a checkpoint and stops");
    expect((await waitForPhase(namespace, "long-cli", ["Suspended"])).spec.runPolicy?.suspend).toBe(true);
    expect((await kubetune(["suspend", "long-cli", "-n", namespace])).stdout.trim()).toBe("finetunejob.kubetune.io/long-cli is already suspended");
    expect((await kubetune(["resume", "long-cli", "-n", namespace])).stdout).toContain("finetunejob.kubetune.io/long-cli resumed from the checkpoint at step");
    await eventually("attempt 2 to train", async () => {
      const job = await getJob(namespace, "long-cli");
      return job.status?.attempts === 2 && job.status.phase === "Running" && job.status.conditions?.some((c) => c.type === "Running" && c.status === "True") ? true : undefined;
    }, 60_000);

    const follower = spawn(process.execPath, ["bin/kubetune.mjs", "logs", "long-cli", "-f", "-n", namespace], { env: { ...process.env, KUBECONFIG: cluster().kubeconfig } });
    let followed = "";
    follower.stdout.on("data", (chunk: Buffer) => (followed += chunk.toString()));
    const followerDone = new Promise<number | null>((resolve) => follower.once("exit", resolve));
    await eventually("logs -f to print attempt 2", async () => (followed.includes("attempt 2") ? true : undefined), 60_000);

    const cancelled = await kubetune(["cancel", "long-cli", "-n", namespace]);
    expect(cancelled.status, cancelled.stderr).toBe(0);
    expect(cancelled.stdout).toBe(`finetunejob.kubetune.io/long-cli cancelled and deleted; its checkpoints in s3://${cluster().s3.bucket}/outputs/long-cli/checkpoints stay\n`);
    await expect(getJob(namespace, "long-cli")).rejects.toSatisfy(isNotFound);
    expect(await followerDone).toBe(0);
    expect(followed).toContain("SIGTERM: saved a checkpoint");
  });

  it("says where a job is when it is not in the namespace asked for, and what to do about a missing namespace or job", async () => {
    const elsewhere = await kubetune(["status", "ok-cli"]);
    expect(elsewhere.status).toBe(1);
    expect(elsewhere.stderr.trim()).toBe(`kubetune: finetunejob "ok-cli" is not in namespace "default" but in "${namespace}": add -n ${namespace}`);
    expect((await kubetune(["logs", "ok-cli", "-n", "no-such-namespace"])).stderr.trim()).toBe('kubetune: namespace "no-such-namespace" does not exist; name another with -n NAMESPACE');
    expect((await kubetune(["suspend", "nothere", "-n", namespace])).stderr.trim()).toBe(
      `kubetune: finetunejob "nothere" not found in namespace "${namespace}"; kubetune list -n ${namespace} shows the jobs there (kubetune list -A, every namespace)`,
    );
  });

  it("says how to get a cluster when there is none, or when it does not answer", async () => {
    const none = await kubetune(["list"], { KUBECONFIG: path.join(dir, "missing-kubeconfig") });
    expect(none.status).toBe(1);
    expect(none.stderr.trim()).toBe(
      `kubetune: no cluster: the kubeconfig ${path.join(dir, "missing-kubeconfig")} (from KUBECONFIG) does not exist; start the local one with eval "$(npx kubetune dev-cluster up)", or point KUBECONFIG (or --kubeconfig) at your cluster's kubeconfig`,
    );
    const port = await freePort();
    const stale = path.join(dir, "stale-kubeconfig");
    await writeFile(stale, kubeconfigYaml(`https://127.0.0.1:${port}`, await readFile(path.join(cluster().dir, "pki", "ca.crt")), "token"));
    const unreachable = await kubetune(["status", "x"], { KUBECONFIG: stale });
    expect(unreachable.status).toBe(1);
    expect(unreachable.stderr).toContain(`kubetune: cannot reach the Kubernetes API server at https://127.0.0.1:${port} (ECONNREFUSED): is the cluster running?`);
  });
});

describe("the kubetune CLI against a cluster without kubetune", () => {
  let bare: ControlPlane;

  beforeAll(async () => {
    const binaries = await resolveBinaries(["kube-apiserver", "etcd"]);
    bare = await startControlPlane({ dir: await mkdtemp(path.join(os.tmpdir(), "kubetune-bare-")), kubeApiserver: binaries["kube-apiserver"], etcd: binaries.etcd });
  });

  afterAll(async () => {
    await bare?.stop();
  });

  it("says the API is not installed and how to install it", async () => {
    for (const args of [["list"], ["status", "quickstart"]]) {
      const result = await kubetune(args, { KUBECONFIG: bare.kubeconfig });
      expect(result.status).toBe(1);
      expect(result.stderr.trim()).toBe(
        `kubetune: the cluster at ${bare.server} does not serve FineTuneJobs (kubetune.io/v1alpha1): install kubetune: helm install kubetune helm/kubetune -n kubetune-system --create-namespace (or only the CRD: kubectl apply --server-side -f crds/kubetune.io_finetunejobs.yaml)`,
      );
    }
  });
});
