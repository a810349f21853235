import { describe, expect, it } from "vitest";
import type { FineTuneJob } from "../../api/index.ts";
import { demandOf, matchesSelector } from "./controller.ts";

describe("matchesSelector", () => {
  const labels = { team: "a", tier: "gold" };

  it("follows metav1.LabelSelector: every matchLabels entry and every expression must hold", () => {
    expect(matchesSelector({}, labels)).toBe(true);
    expect(matchesSelector({ matchLabels: { team: "a" } }, labels)).toBe(true);
    expect(matchesSelector({ matchLabels: { team: "b" } }, labels)).toBe(false);
    expect(matchesSelector({ matchExpressions: [{ key: "tier", operator: "In", values: ["gold", "silver"] }] }, labels)).toBe(true);
    expect(matchesSelector({ matchExpressions: [{ key: "tier", operator: "NotIn", values: ["gold"] }] }, labels)).toBe(false);
    expect(matchesSelector({ matchExpressions: [{ key: "absent", operator: "NotIn", values: ["x"] }] }, labels)).toBe(true);
    expect(matchesSelector({ matchExpressions: [{ key: "team", operator: "Exists" }] }, labels)).toBe(true);
    expect(matchesSelector({ matchExpressions: [{ key: "team", operator: "DoesNotExist" }] }, labels)).toBe(false);
    expect(matchesSelector({ matchLabels: { team: "a" }, matchExpressions: [{ key: "tier", operator: "In", values: ["bronze"] }] }, labels)).toBe(false);
  });
});

describe("demandOf", () => {
  it("counts GPUs, CPU in millicores and memory in bytes; absent requests count 0", () => {
    const job = (resources: Record<string, unknown>) => ({ spec: { resources } }) as unknown as FineTuneJob;
    expect(demandOf(job({ gpus: 2, cpu: "1500m", memory: "16Gi" }))).toEqual({ gpus: 2, cpu: 1500, memory: 16 * 2 ** 30 });
    expect(demandOf(job({ cpu: 4 }))).toEqual({ gpus: 0, cpu: 4000, memory: 0 });
    expect(demandOf(job({}))).toEqual({ gpus: 0, cpu: 0, memory: 0 });
  });
});
