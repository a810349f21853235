import { describe, expect, it } from "vitest";
import { Expectations } from "./expectations.ts";

describe("Expectations", () => {
  it("holds a key until every expected creation is observed", () => {
    const expectations = new Expectations(60_000, () => 0);
    expect(expectations.pendingMs("ns/job")).toBe(0);
    expectations.expectCreation("ns/job", "job-train-1");
    expectations.expectCreation("ns/job", "job-preflight");
    expect(expectations.pendingMs("ns/job")).toBe(60_000);
    expectations.observed("ns/job", "job-train-1");
    expect(expectations.pendingMs("ns/job")).toBe(60_000);
    expectations.observed("ns/job", "job-preflight");
    expect(expectations.pendingMs("ns/job")).toBe(0);
  });

  it("lets a key go after the timeout, so a lost watch event cannot stall a job", () => {
    let now = 0;
    const expectations = new Expectations(1000, () => now);
    expectations.expectCreation("ns/job", "job-train-1");
    now = 400;
    expect(expectations.pendingMs("ns/job")).toBe(600);
    now = 1000;
    expect(expectations.pendingMs("ns/job")).toBe(0);
    now = 1001;
    expect(expectations.pendingMs("ns/job")).toBe(0);
  });
});
