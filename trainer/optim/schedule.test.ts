import { describe, expect, it } from "vitest";
import { learningRateAt } from "./schedule.ts";

describe("learningRateAt", () => {
  const base = { learningRate: 1e-3, warmupSteps: 10, totalSteps: 110 };

  it("warms up linearly from zero", () => {
    expect(learningRateAt(0, { ...base, type: "cosine" })).toBe(0);
    expect(learningRateAt(5, { ...base, type: "cosine" })).toBeCloseTo(5e-4, 12);
    expect(learningRateAt(10, { ...base, type: "cosine" })).toBeCloseTo(1e-3, 12);
  });

  it("decays to zero by a half cosine, reaching half the peak mid-way", () => {
    expect(learningRateAt(60, { ...base, type: "cosine" })).toBeCloseTo(5e-4, 12);
    expect(learningRateAt(110, { ...base, type: "cosine" })).toBeCloseTo(0, 12);
  });

  it("decays linearly or stays constant after warmup", () => {
    expect(learningRateAt(35, { ...base, type: "linear" })).toBeCloseTo(7.5e-4, 12);
    expect(learningRateAt(110, { ...base, type: "linear" })).toBe(0);
    expect(learningRateAt(100, { ...base, type: "constant" })).toBe(1e-3);
  });

  it("treats zero warmup as none", () => {
    expect(learningRateAt(0, { ...base, warmupSteps: 0, type: "constant" })).toBe(1e-3);
  });
});
