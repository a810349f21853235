import { spawnSync } from "node:child_process";
import { mkdtemp, chmod } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { isPortOpen } from "../../localcluster/process.ts";

function kubetune(args: string[], env: NodeJS.ProcessEnv) {
  return spawnSync(process.execPath, ["bin/kubetune.mjs", ...args], { encoding: "utf8", env: { ...process.env, ...env }, timeout: 180_000 });
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
    expect(table.slice(0, 4)).toEqual(["quickstart", "Succeeded", "lora", "100"]);

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
