import { describe, expect, it } from "vitest";
import type { FineTuneJob } from "../api/index.ts";
import { OperatorMetrics } from "./metrics.ts";

const job = (namespace: string, name: string, phase?: string): FineTuneJob => ({ metadata: { namespace, name }, status: phase ? { phase } : undefined }) as FineTuneJob;

async function counts(metrics: OperatorMetrics): Promise<Record<string, number>> {
  const values = (await metrics.jobs.get()).values.filter((value) => value.value !== 0);
  return Object.fromEntries(values.map((value) => [`${value.labels.namespace}/${value.labels.phase}`, value.value]));
}

describe("kubetune_jobs", () => {
  it("follows adds, phase changes and deletes one job at a time, and drops a namespace with its last job", async () => {
    const metrics = new OperatorMetrics();
    metrics.jobAdded(job("a", "x"));
    metrics.jobAdded(job("a", "y", "Running"));
    metrics.jobAdded(job("b", "z", "Running"));
    // A relist delivers a job it already has as an add again: counted once.
    metrics.jobAdded(job("a", "y", "Running"));
    expect(await counts(metrics)).toEqual({ "a/Pending": 1, "a/Running": 1, "b/Running": 1 });
    metrics.jobUpdated(job("a", "x"), job("a", "x", "Running"));
    metrics.jobUpdated(job("a", "y", "Running"), job("a", "y", "Succeeded"));
    expect(await counts(metrics)).toEqual({ "a/Running": 1, "a/Succeeded": 1, "b/Running": 1 });
    // A delete subtracts the phase that was counted, whatever the deleted object says.
    metrics.jobDeleted(job("b", "z", "Failed"));
    expect((await metrics.jobs.get()).values.some((value) => value.labels.namespace === "b")).toBe(false);
    expect((await metrics.jobs.get()).values.filter((value) => value.labels.namespace === "a")).toHaveLength(6);
  });
});

describe("the Event recorder's backlog", () => {
  it("shows the Events waiting and those dropped, as they are at each scrape", async () => {
    const metrics = new OperatorMetrics();
    const events = { pending: 3, dropped: 0 };
    metrics.trackEvents(events);
    const scrape = async () => Object.fromEntries((await metrics.registry.getMetricsAsJSON()).filter((metric) => metric.name.startsWith("kubetune_events_")).map((metric) => [metric.name, metric.values[0]?.value]));
    expect(await scrape()).toEqual({ kubetune_events_pending: 3, kubetune_events_dropped_total: 0 });
    Object.assign(events, { pending: 0, dropped: 2 });
    expect(await scrape()).toEqual({ kubetune_events_pending: 0, kubetune_events_dropped_total: 2 });
  });
});
