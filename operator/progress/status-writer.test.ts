import { describe, expect, it } from "vitest";
import { API_VERSION, GROUP, KIND, PLURAL, VERSION, type FineTuneJob } from "../../api/index.ts";
import { resourcePath } from "../../kube/client.ts";
import { FakeKube } from "../../kube/fake.ts";
import { StatusWriter, WriteRefused } from "./status-writer.ts";

const namespace = "team-a";
const jobPath = (name?: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace, name });
const statusPath = (name: string) => `${jobPath(name)}/status`;

async function storeJob(kube: FakeKube): Promise<FineTuneJob> {
  const created = await kube.create<FineTuneJob>(jobPath(), {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: "tune", namespace },
    spec: { baseModel: { uri: "s3://m/x" }, dataset: { train: "s3://d/t.jsonl" }, method: { type: "lora" }, output: { uri: "s3://o/x" } },
  } as FineTuneJob);
  await kube.patch(statusPath("tune"), { status: { phase: "Running", attempts: 1 } });
  return created;
}

/** The operator's job cache, which shows the server's job only once told to (a watch that lags). */
class LaggingCache {
  private shown: FineTuneJob | undefined;
  lookups = 0;
  constructor(private readonly kube: FakeKube) {
    this.catchUp();
  }
  catchUp(): void {
    this.shown = this.kube.stored<FineTuneJob>(jobPath("tune"));
  }
  lookup = (): FineTuneJob | undefined => {
    this.lookups += 1;
    return this.shown;
  };
}

const condition = { type: "Running", status: "True", reason: "Training", message: "", lastTransitionTime: "2026-01-01T00:00:00Z" };
const checkpoint = { step: 5, uri: "s3://o/x/checkpoints/step-00000005" };
const gets = (kube: FakeKube) => kube.calls.filter((call) => call.method === "GET").length;
const statusPatches = (kube: FakeKube) => kube.calls.filter((call) => call.method === "PATCH" && call.path === statusPath("tune")).length;

describe("StatusWriter after a conflict", () => {
  it("waits for the operator's cache to show the newer version, then writes on it (no GET)", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube);
    const cache = new LaggingCache(kube);
    // The controller writes a condition the cache has not seen yet.
    await kube.patch(statusPath("tune"), { status: { conditions: [condition] } });
    const writer = new StatusWriter({ client: kube.asClient(), lookup: cache.lookup, intervalMs: 50, urgentIntervalMs: 10 });
    const before = { gets: gets(kube), patches: statusPatches(kube) };
    const written = writer.submit({ namespace, name: "tune", uid: job.metadata.uid! }, { step: 5, checkpoint }, true);
    let settled = false;
    void written.finally(() => (settled = true));
    // The first try met the conflict; the writer waits on the cache rather than reading the job.
    while (statusPatches(kube) === before.patches) await new Promise((resolve) => setTimeout(resolve, 5));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(settled).toBe(false);
    const lookupsWhileWaiting = cache.lookups;
    expect(lookupsWhileWaiting).toBeGreaterThan(1);
    cache.catchUp();
    await written;
    const stored = kube.stored<FineTuneJob>(jobPath("tune"))!;
    expect(stored.status?.lastCheckpoint).toMatchObject({ step: 5 });
    // What the controller wrote meanwhile is kept: the retry was computed from the newer version.
    expect(stored.status?.conditions).toEqual([condition]);
    expect(statusPatches(kube) - before.patches).toBe(2);
    expect(gets(kube) - before.gets).toBe(0);
    expect(writer.writes).toBe(1);
    await writer.close();
  });

  it("fails the write with a clear reason when the cache shows no newer version within conflictWaitMs", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube);
    const cache = new LaggingCache(kube);
    await kube.patch(statusPath("tune"), { status: { conditions: [condition] } });
    const lines: string[] = [];
    const writer = new StatusWriter({ client: kube.asClient(), lookup: cache.lookup, intervalMs: 50, urgentIntervalMs: 10, conflictWaitMs: 200, log: (line) => lines.push(line) });
    const before = gets(kube);
    const error = await writer.submit({ namespace, name: "tune", uid: job.metadata.uid! }, { step: 5, checkpoint }, true).catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(WriteRefused);
    expect((error as WriteRefused).status).toBe(503);
    expect((error as Error).message).toMatch(/cache has shown no version of the job after \d+ for 0.2 s/);
    expect(lines.join("\n")).toContain("progress of team-a/tune");
    expect(gets(kube)).toBe(before);
    // The controller's condition is untouched.
    expect(kube.stored<FineTuneJob>(jobPath("tune"))?.status?.conditions).toEqual([condition]);
    await writer.close();
  });

  it("refuses the write when the cache shows the job deleted (or replaced) while it waited", async () => {
    const kube = new FakeKube();
    const job = await storeJob(kube);
    let shown: FineTuneJob | undefined = kube.stored<FineTuneJob>(jobPath("tune"));
    await kube.patch(statusPath("tune"), { status: { conditions: [condition] } });
    const writer = new StatusWriter({ client: kube.asClient(), lookup: () => shown, intervalMs: 50, urgentIntervalMs: 10 });
    const written = writer.submit({ namespace, name: "tune", uid: job.metadata.uid! }, { step: 5, checkpoint }, true).catch((failure: unknown) => failure);
    await new Promise((resolve) => setTimeout(resolve, 100));
    // Replaced: same name, another uid.
    shown = { ...shown!, metadata: { ...shown!.metadata, uid: "another", resourceVersion: "999" } };
    const error = await written;
    expect(error).toBeInstanceOf(WriteRefused);
    expect((error as WriteRefused).status).toBe(404);
    await writer.close();
  });
});
