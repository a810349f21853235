import { describe, expect, it } from "vitest";
import type { KubeClient, WatchEventType } from "./client.ts";
import { Informer } from "./informer.ts";

describe("Informer", () => {
  it("backs off when every watch ends at once with an error other than 410", async () => {
    let watches = 0;
    const client = {
      list: async () => ({ items: [], metadata: { resourceVersion: "1" } }),
      watch: async (_path: string, _query: unknown, onEvent: (type: WatchEventType, object: unknown) => void) => {
        watches += 1;
        await new Promise((resolve) => setImmediate(resolve));
        onEvent("ERROR", { code: 500, message: "etcdserver: leader changed" });
      },
    } as unknown as KubeClient;
    const informer = new Informer(client, { path: "/api/v1/pods" });
    await informer.start();
    await new Promise((resolve) => setTimeout(resolve, 400));
    await informer.stop();
    // 250-500 ms after the first error, then 500-1000 ms: at most two watches in 400 ms, where a hot loop makes thousands.
    expect(watches).toBeLessThanOrEqual(3);
  });
});
