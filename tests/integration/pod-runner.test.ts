import type { V1Pod } from "@kubernetes/client-node";
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isNotFound, resourcePath } from "../../kube/client.ts";
import { kubeletTls } from "../../localcluster/pki.ts";
import { PodRunner } from "../../localcluster/pod-runner.ts";
import { mountVolumes } from "../../localcluster/volumes.ts";
import { cluster, createNamespace, eventually, kubeClient, kubectlAsync } from "./harness.ts";

const SHELL_IMAGE = "kubetune.local/shell:1";

describe("the local pod runner", () => {
  const client = kubeClient();
  let namespace: string;
  let runner: PodRunner;
  let scratch: string;

  beforeAll(async () => {
    namespace = await createNamespace("runner");
    scratch = await mkdtemp(path.join(os.tmpdir(), "kubetune-runner-test-"));
    await chmod(scratch, 0o711);
    runner = new PodRunner({
      client,
      workDir: path.join(scratch, "pods"),
      images: { [SHELL_IMAGE]: {} },
      nodeName: `runner-${namespace}`,
      namespaces: [namespace],
      capacity: { cpu: "2", memory: "4Gi", gpus: 0 },
      kubeletTls: kubeletTls(path.join(cluster().dir, "pki")),
      log: (line) => console.log(`[runner] ${line}`),
    });
    await runner.start();
  });

  afterAll(async () => {
    await runner.stop();
  });

  const pods = () => resourcePath({ group: "", version: "v1", plural: "pods", namespace });
  const podPath = (name: string) => resourcePath({ group: "", version: "v1", plural: "pods", namespace, name });

  function shellPod(name: string, script: string, extra: Partial<V1Pod["spec"]> & { env?: object[]; resources?: object } = {}): V1Pod {
    const { env, resources, ...spec } = extra;
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name },
      spec: {
        restartPolicy: "Never",
        ...spec,
        containers: [{ name: "main", image: SHELL_IMAGE, command: ["sh", "-c", script], terminationMessagePolicy: "FallbackToLogsOnError", env: env as never, resources: resources as never }],
      },
    };
  }

  async function phaseOf(name: string, wanted: string[]): Promise<V1Pod> {
    return eventually(`pod ${name} to reach ${wanted.join(" or ")}`, async () => {
      const pod = await client.get<V1Pod>(podPath(name));
      return wanted.includes(pod.status?.phase ?? "") ? pod : undefined;
    });
  }

  it("runs a pod's command to Succeeded, with env from a Secret and the downward API", async () => {
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "creds" },
      stringData: { token: "s3cr3t" },
    });
    const marker = path.join(scratch, "env-out");
    await client.create(
      pods(),
      shellPod("ok", `echo "$TOKEN $POD_NAME $GREETING" > ${marker}`, {
        env: [
          { name: "TOKEN", valueFrom: { secretKeyRef: { name: "creds", key: "token" } } },
          { name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
          { name: "GREETING", value: "hello" },
        ],
      }),
    );
    const pod = await phaseOf("ok", ["Succeeded", "Failed"]);
    expect(pod.status?.phase).toBe("Succeeded");
    expect(pod.spec?.nodeName).toBe(runner.nodeName);
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ exitCode: 0, reason: "Completed" });
    expect(readFileSync(marker, "utf8").trim()).toBe("s3cr3t ok hello");
  });

  it("reports a failing command as Failed with its exit code and the log's tail as message", async () => {
    await client.create(pods(), shellPod("fails", "echo 'dataset.jsonl:3: not JSON' >&2; exit 3"));
    const pod = await phaseOf("fails", ["Succeeded", "Failed"]);
    expect(pod.status?.phase).toBe("Failed");
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({
      exitCode: 3,
      reason: "Error",
      message: "dataset.jsonl:3: not JSON",
    });
  });

  it("sends SIGTERM when a running pod is deleted, then removes the pod", async () => {
    const marker = path.join(scratch, "term-out");
    await client.create(
      pods(),
      shellPod("sleeper", `trap 'echo got-TERM > ${marker}; exit 0' TERM; echo started; while true; do sleep 0.1; done`, { terminationGracePeriodSeconds: 10 }),
    );
    await phaseOf("sleeper", ["Running"]);
    await eventually("the sleeper to print started", async () => (runner.logs(namespace, "sleeper").includes("started") ? true : undefined));
    await client.delete(podPath("sleeper"));
    await eventually("the pod to be gone", async () => {
      try {
        await client.get(podPath("sleeper"));
        return undefined;
      } catch (error) {
        return isNotFound(error) ? true : undefined;
      }
    });
    expect(readFileSync(marker, "utf8").trim()).toBe("got-TERM");
  });

  it("kills a pod that ignores SIGTERM once its grace period is over", async () => {
    await client.create(pods(), shellPod("stubborn", "trap '' TERM; echo started; while true; do sleep 0.1; done", { terminationGracePeriodSeconds: 1 }));
    await phaseOf("stubborn", ["Running"]);
    await eventually("the stubborn pod to print started", async () => (runner.logs(namespace, "stubborn").includes("started") ? true : undefined));
    const started = Date.now();
    await client.delete(podPath("stubborn"));
    await eventually("the pod to be gone", async () => client.get(podPath("stubborn")).then(() => undefined, (error: unknown) => (isNotFound(error) ? true : undefined)));
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(runner.processes().has(`${namespace}/stubborn`)).toBe(false);
  });

  it("leaves an image it cannot pull waiting in ImagePullBackOff", async () => {
    const pod = shellPod("nopull", "true");
    pod.spec!.containers[0]!.image = "registry.invalid/never:1";
    await client.create(pods(), pod);
    const waiting = await eventually("ImagePullBackOff", async () => {
      const current = await client.get<V1Pod>(podPath("nopull"));
      const state = current.status?.containerStatuses?.[0]?.state?.waiting;
      return state?.reason === "ImagePullBackOff" ? state : undefined;
    });
    expect(waiting.message).toContain("registry.invalid/never:1");
  });

  it("leaves a pod that does not fit Unschedulable, as the scheduler would", async () => {
    await client.create(pods(), shellPod("wants-gpu", "true", { resources: { limits: { "nvidia.com/gpu": "1" } } }));
    const condition = await eventually("PodScheduled=False", async () => {
      const current = await client.get<V1Pod>(podPath("wants-gpu"));
      return current.status?.conditions?.find((entry) => entry.type === "PodScheduled" && entry.status === "False");
    });
    expect(condition).toMatchObject({ reason: "Unschedulable", message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." });
    expect((await client.get<V1Pod>(podPath("wants-gpu"))).spec?.nodeName).toBeUndefined();
  });

  it("waits with CreateContainerConfigError while a referenced Secret is missing", async () => {
    await client.create(pods(), shellPod("nosecret", "true", { env: [{ name: "X", valueFrom: { secretKeyRef: { name: "absent", key: "k" } } }] }));
    const waiting = await eventually("CreateContainerConfigError", async () => {
      const current = await client.get<V1Pod>(podPath("nosecret"));
      return current.status?.containerStatuses?.[0]?.state?.waiting;
    });
    expect(waiting).toMatchObject({ reason: "CreateContainerConfigError", message: 'secret "absent" not found' });
  });

  it("kills a container above its memory limit with reason OOMKilled", async () => {
    const allocate = `exec ${process.execPath} -e "const a=[]; for(let i=0;i<40;i++){a.push(Buffer.alloc(16*1024*1024,1))} setInterval(()=>{},1000)"`;
    await client.create(pods(), shellPod("hog", allocate, { resources: { limits: { memory: "200Mi" } } }));
    const pod = await phaseOf("hog", ["Failed", "Succeeded"]);
    expect(pod.status?.containerStatuses?.[0]?.state?.terminated).toMatchObject({ reason: "OOMKilled", exitCode: 137 });
  });

  it("runs the pod as its runAsUser when the runner is root", async () => {
    if (process.getuid?.() !== 0) return;
    const marker = path.join(scratch, "uid-out");
    await client.create(pods(), {
      ...shellPod("nonroot", `id -u; touch ${marker} 2>/dev/null; true`, { securityContext: { runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true } }),
    });
    const pod = await phaseOf("nonroot", ["Succeeded", "Failed"]);
    expect(pod.status?.phase).toBe("Succeeded");
    expect(runner.logs(namespace, "nonroot").trim().split("\n")).toEqual(["65532"]);
    expect(existsSync(marker)).toBe(false);
  });

  it("serves container logs to kubectl logs through the API server, following them until the container exits", async () => {
    await client.create(pods(), shellPod("talker", "echo one; sleep 2; echo two >&2; sleep 1; echo three"));
    await eventually("talker to run", async () => ((await client.get<V1Pod>(podPath("talker"))).status?.phase === "Running" ? true : undefined));
    const followed = await kubectlAsync(["logs", "-f", "talker", "-n", namespace]);
    expect(followed.stderr).toBe("");
    expect(followed.stdout).toBe("one\ntwo\nthree\n");
    expect((await phaseOf("talker", ["Succeeded", "Failed"])).status?.phase).toBe("Succeeded");
    expect((await kubectlAsync(["logs", "talker", "-n", namespace, "--tail", "1"])).stdout).toBe("three\n");
    const waiting = await kubectlAsync(["logs", "nosuchpod", "-n", namespace]);
    expect(waiting.status).not.toBe(0);
    expect(waiting.stderr).toContain('pods "nosuchpod" not found');
  });

  it("mounts Secret volumes and the service account token, with in-cluster access as the pod's service account", async () => {
    await client.create(resourcePath({ group: "", version: "v1", plural: "secrets", namespace }), {
      apiVersion: "v1",
      kind: "Secret",
      metadata: { name: "conf" },
      stringData: { greeting: "hello from a volume" },
    });
    const pod = shellPod("mounts", "", { env: [{ name: "KUBECTL", value: cluster().kubectl }], volumes: [{ name: "conf", secret: { secretName: "conf" } }] });
    const script = 'cat "${1#--greeting=}"; echo; cat "$2"; echo; "$KUBECTL" auth whoami -o json | grep -o "system:serviceaccount:[^\\"]*"';
    // Paths under a mount path are rewritten, alone or as the value of --flag=.
    pod.spec!.containers[0]!.command = ["sh", "-c", script, "sh", "--greeting=/etc/conf/greeting", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"];
    pod.spec!.containers[0]!.volumeMounts = [{ name: "conf", mountPath: "/etc/conf", readOnly: true }];
    await client.create(pods(), pod);
    const done = await phaseOf("mounts", ["Succeeded", "Failed"]);
    expect(done.status?.phase, runner.logs(namespace, "mounts")).toBe("Succeeded");
    expect(runner.logs(namespace, "mounts").trim().split("\n")).toEqual(["hello from a volume", namespace, `system:serviceaccount:${namespace}:default`]);
  });

  it("projects a service account token bound to the pod for the volume's audience, and requests a new one at 80% of its life", async () => {
    // On another node: the runner does not start it; the test mounts its volumes as the runner would.
    const pod = shellPod("token", "true", { nodeName: "elsewhere", volumes: [{ name: "progress", projected: { sources: [{ serviceAccountToken: { audience: "kubetune-progress", expirationSeconds: 600, path: "token" } }] } }] });
    pod.spec!.containers[0]!.volumeMounts = [{ name: "progress", mountPath: "/var/run/secrets/kubetune.io/progress", readOnly: true }];
    const created = await client.create<V1Pod>(pods(), pod);
    const dir = await mkdtemp(path.join(scratch, "token-"));
    const mounted = await mountVolumes(client, created, created.spec!.containers[0]!, dir, undefined);
    expect(mounted.mounts.get("/var/run/secrets/kubetune.io/progress")).toBe(path.join(dir, "volumes", "progress"));
    expect(mounted.tokenRefresh?.everyMs).toBe(480_000);
    const file = path.join(dir, "volumes", "progress", "token");
    const review = (token: string) =>
      client.create<{ status: { authenticated?: boolean; user?: { extra?: Record<string, string[]> } } }>("/apis/authentication.k8s.io/v1/tokenreviews", { apiVersion: "authentication.k8s.io/v1", kind: "TokenReview", spec: { token, audiences: ["kubetune-progress"] } });
    const first = readFileSync(file, "utf8");
    expect((await review(first)).status).toMatchObject({ authenticated: true, user: { extra: { "authentication.kubernetes.io/pod-name": ["token"], "authentication.kubernetes.io/pod-uid": [created.metadata!.uid] } } });
    await mounted.tokenRefresh!.refresh();
    const second = readFileSync(file, "utf8");
    expect(second).not.toBe(first);
    expect((await review(second)).status.authenticated).toBe(true);
    await client.delete(podPath("token"), { gracePeriodSeconds: 0 });
  });

  it("leaves a pod whose Secret volume is missing ContainerCreating", async () => {
    const pod = shellPod("nomount", "true", { volumes: [{ name: "conf", secret: { secretName: "absent-volume" } }] });
    pod.spec!.containers[0]!.volumeMounts = [{ name: "conf", mountPath: "/etc/conf" }];
    await client.create(pods(), pod);
    const waiting = await eventually("ContainerCreating", async () => (await client.get<V1Pod>(podPath("nomount"))).status?.containerStatuses?.[0]?.state?.waiting);
    expect(waiting).toMatchObject({ reason: "ContainerCreating", message: 'MountVolume.SetUp failed for volume "conf": secret "absent-volume" not found' });
  });
});
