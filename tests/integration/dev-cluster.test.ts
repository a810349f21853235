import type { V1Pod } from "@kubernetes/client-node";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, chmod } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { isPortOpen } from "../../localcluster/process.ts";

function kubetune(args: string[], env: NodeJS.ProcessEnv) {
  return spawnSync(process.execPath, ["bin/kubetune.mjs", ...args], { encoding: "utf8", env: { ...process.env, ...env }, timeout: 600_000 });
}

describe("kubetune dev-cluster", () => {
  it("prints shell exports for a real API server, runs the dev-cluster quickstart to Succeeded, and down leaves nothing behind", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-devcluster-test-"));
    await chmod(dir, 0o755);
    const env = { KUBETUNE_DEV_CLUSTER_DIR: path.join(dir, "cluster") };
    const up = kubetune(["dev-cluster", "up"], env);
    expect(up.status, up.stderr).toBe(0);
    const exports = Object.fromEntries([...up.stdout.matchAll(/^export (\w+)='([^']*)'/gm)].map((match) => [match[1]!, match[2]!]));
    expect(Object.keys(exports)).toEqual(["KUBECONFIG", "PATH", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]);
    const kubectl = spawnSync(path.join(exports.PATH!, "kubectl"), ["get", "crd", "finetunejobs.kubetune.io", "-o", "name"], { encoding: "utf8", env: { ...process.env, KUBECONFIG: exports.KUBECONFIG } });
    expect(kubectl.stdout.trim()).toBe("customresourcedefinition.apiextensions.k8s.io/finetunejobs.kubetune.io");
    const secret = spawnSync(path.join(exports.PATH!, "kubectl"), ["get", "secret", "kubetune-s3", "-o", "name"], { encoding: "utf8", env: { ...process.env, KUBECONFIG: exports.KUBECONFIG } });
    expect(secret.stdout.trim()).toBe("secret/kubetune-s3");
    // The dev-cluster quickstart runs there unchanged: the real operator, preflight and trainer.
    const kubectlIn = (args: string[]) => spawnSync(path.join(exports.PATH!, "kubectl"), args, { encoding: "utf8", env: { ...process.env, KUBECONFIG: exports.KUBECONFIG } });
    expect(kubectlIn(["apply", "-f", "examples/dev-cluster/quickstart.yaml"]).status).toBe(0);
    const phases = new Set<string>();
    let progressWhileRunning = false;
    const deadline = Date.now() + 240_000;
    let phase = "";
    while (Date.now() < deadline && phase !== "Succeeded" && phase !== "Failed") {
      const job = JSON.parse(kubectlIn(["get", "ftj", "quickstart", "-o", "json"]).stdout) as { status?: { phase?: string; progress?: { step?: number } } };
      phase = job.status?.phase ?? "";
      phases.add(phase);
      if (phase === "Running" && (job.status?.progress?.step ?? 0) > 0) progressWhileRunning = true;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(phase).toBe("Succeeded");
    expect(progressWhileRunning).toBe(true);
    const table = kubectlIn(["get", "ftj", "quickstart"]).stdout.trim().split("\n")[1]!.split(/\s+/);
    expect(table.slice(0, 4)).toEqual(["quickstart", "Succeeded", "lora", "100%"]);

    const server = /server: (\S+)/.exec(spawnSync("cat", [exports.KUBECONFIG!], { encoding: "utf8" }).stdout)![1]!;
    const ports = [Number(new URL(server).port), Number(new URL(exports.AWS_ENDPOINT_URL!).port)];
    const pid = Number(/running \(pid (\d+)\)/.exec(kubetune(["dev-cluster", "status"], env).stdout)![1]);
    expect(await Promise.all(ports.map(isPortOpen))).toEqual([true, true]);

    const down = kubetune(["dev-cluster", "down"], env);
    expect(down.status).toBe(0);
    expect(await Promise.all(ports.map(isPortOpen))).toEqual([false, false]);
    expect(() => process.kill(pid, 0)).toThrow();
    expect(spawnSync("pgrep", ["-f", env.KUBETUNE_DEV_CLUSTER_DIR], { encoding: "utf8" }).stdout.trim()).toBe("");
    expect(kubetune(["dev-cluster", "status"], env).stdout.trim()).toBe("no dev cluster is running");
  });
});

describe("kubetune dev-cluster up --from-chart", () => {
  it("runs the operator from the Helm chart, and kubetune submit --wait runs the quickstart there to Succeeded; status, logs, kubectl logs and merge work on the result", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-devcluster-chart-test-"));
    await chmod(dir, 0o755);
    const env = { KUBETUNE_DEV_CLUSTER_DIR: path.join(dir, "cluster") };
    try {
      const up = kubetune(["dev-cluster", "up", "--from-chart"], env);
      expect(up.status, up.stderr).toBe(0);
      const exports = Object.fromEntries([...up.stdout.matchAll(/^export (\w+)='([^']*)'/gm)].map((match) => [match[1]!, match[2]!]));
      // The shell that eval "$(kubetune dev-cluster up --from-chart)" prepared.
      const shell = { ...exports, PATH: `${exports.PATH}:${process.env.PATH}` };
      const kubectlIn = (args: string[]) => spawnSync("kubectl", args, { encoding: "utf8", env: { ...process.env, ...shell } });
      expect(kubetune(["dev-cluster", "status"], env).stdout).toContain("operator from the Helm chart in kubetune-system");
      const operatorPod = JSON.parse(kubectlIn(["get", "pods", "-n", "kubetune-system", "-l", "app.kubernetes.io/component=operator", "-o", "json"]).stdout) as { items: V1Pod[] };
      expect(operatorPod.items.map((pod) => [pod.spec?.serviceAccountName, pod.status?.phase])).toEqual([["kubetune-operator", "Running"]]);

      const submitted = kubetune(["submit", "examples/dev-cluster/quickstart.yaml", "--wait", "--timeout", "8m"], shell);
      expect(submitted.status, submitted.stderr).toBe(0);
      expect(submitted.stdout).toContain("finetunejob.kubetune.io/quickstart created");
      expect(submitted.stdout).toContain("finetunejob.kubetune.io/quickstart Succeeded: outputs in s3://kubetune/outputs/quickstart (loads in PEFT, vLLM)");

      const [, row] = kubectlIn(["get", "ftj", "quickstart"]).stdout.trim().split("\n");
      const [name, phase, method, progress, loss, eta] = row!.split(/\s+/);
      expect([name, phase, method, progress, eta]).toEqual(["quickstart", "Succeeded", "lora", "100%", "0s"]);
      expect(Number(loss).toPrecision(4)).toBe(loss);

      const status = kubetune(["status", "quickstart"], shell);
      expect(status.stdout).toContain(`Loss:       ${loss} (eval `);
      expect(status.stdout).toMatch(/^Loss: .*\) +[▁▂▃▄▅▆▇█]{4,} /m);
      expect(status.stdout).toContain("Outputs:    s3://kubetune/outputs/quickstart");
      const logs = kubetune(["logs", "quickstart", "--tail", "2"], shell);
      expect(logs.stdout.trim().split("\n").map((line) => JSON.parse(line) as { event: string })).toContainEqual(expect.objectContaining({ event: "done", step: 200 }));
      expect(kubectlIn(["logs", "quickstart-train-1", "--tail=2"]).stdout).toBe(logs.stdout);
      expect(kubectlIn(["logs", "-n", "kubetune-system", "-l", "app.kubernetes.io/component=operator", "--tail=-1"]).stdout).toContain("is now the leader");

      const merged = path.join(dir, "merged");
      const merge = kubetune(["merge", "s3://kubetune/outputs/quickstart", "--base", "s3://kubetune/quickstart/model", "--out", merged], shell);
      expect(merge.status, merge.stderr).toBe(0);
      expect(merge.stdout).toMatch(/^merged 8 LoRA modules into /);
      expect(existsSync(path.join(merged, "model.safetensors"))).toBe(true);
    } finally {
      expect(kubetune(["dev-cluster", "down"], env).status).toBe(0);
    }
  }, 900_000);
});

describe("kubetune dev-cluster up --gpus 1", () => {
  it("advertises one GPU, and its FineTuneQueue of one GPU runs the two 1-GPU jobs of examples/dev-cluster/queue.yaml one after the other", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "kubetune-devcluster-queue-test-"));
    await chmod(dir, 0o755);
    const env = { KUBETUNE_DEV_CLUSTER_DIR: path.join(dir, "cluster") };
    try {
      expect(kubetune(["dev-cluster", "up", "--gpus", "1.5"], env).stderr).toContain("--gpus 1.5: must be a whole number from 0 to 64");
      const up = kubetune(["dev-cluster", "up", "--gpus", "1"], env);
      expect(up.status, up.stderr).toBe(0);
      const exports = Object.fromEntries([...up.stdout.matchAll(/^export (\w+)='([^']*)'/gm)].map((match) => [match[1]!, match[2]!]));
      const kubectlIn = (args: string[]) => spawnSync(path.join(exports.PATH!, "kubectl"), args, { encoding: "utf8", env: { ...process.env, KUBECONFIG: exports.KUBECONFIG } });
      expect(kubetune(["dev-cluster", "status"], env).stdout).toContain("operator in-process, 1 GPU,");
      expect(kubectlIn(["get", "nodes", "-o", "jsonpath={.items[*].status.allocatable.nvidia\\.com/gpu}"]).stdout).toBe("1");
      const applied = kubectlIn(["apply", "-f", "examples/dev-cluster/queue.yaml"]);
      expect(applied.stderr).toBe("");

      interface Job { status?: { phase?: string; queue?: { position?: number; waitReason?: string }; attempts?: number; failedAttempts?: number } }
      const seenWaiting: NonNullable<Job["status"]>["queue"][] = [];
      let overlapped = false;
      let phases: Record<string, string> = {};
      const deadline = Date.now() + 240_000;
      while (Date.now() < deadline && !(phases["queued-a"] === "Succeeded" && phases["queued-b"] === "Succeeded")) {
        const listed = JSON.parse(kubectlIn(["get", "ftj", "-o", "json"]).stdout) as { items: (Job & { metadata: { name: string } })[] };
        phases = Object.fromEntries(listed.items.map((job) => [job.metadata.name, job.status?.phase ?? ""]));
        const b = listed.items.find((job) => job.metadata.name === "queued-b");
        // The second job waits, with its position and reason, as long as the first has not succeeded.
        if (phases["queued-a"] !== "Succeeded") {
          if (phases["queued-b"] !== "Queued" && phases["queued-b"] !== "") overlapped = true;
          if (b?.status?.queue) seenWaiting.push(b.status.queue);
        }
        if (Object.values(phases).includes("Failed")) break;
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      expect(phases).toEqual({ "queued-a": "Succeeded", "queued-b": "Succeeded" });
      expect(overlapped).toBe(false);
      expect(seenWaiting).toContainEqual({ position: 1, waitReason: "waiting for 1 GPU; 1 of 1 GPUs in use by default/queued-a" });
      const b = JSON.parse(kubectlIn(["get", "ftj", "queued-b", "-o", "json"]).stdout) as Job;
      expect(b.status).toMatchObject({ attempts: 1, failedAttempts: 0 });
      expect(b.status?.queue).toBeUndefined();
      const [header, row] = kubectlIn(["get", "ftq", "dev-gpus"]).stdout.trim().split("\n");
      expect(header!.split(/\s{2,}/)).toEqual(["NAME", "GPUS", "IN USE", "ADMITTED", "QUEUED", "AGE"]);
      expect(row!.split(/\s+/).slice(0, 5)).toEqual(["dev-gpus", "1", "0", "0", "0"]);
    } finally {
      expect(kubetune(["dev-cluster", "down"], env).status).toBe(0);
    }
  }, 400_000);
});
