import { describe, expect, it } from "vitest";
import { Rng } from "./random.ts";

describe("Rng", () => {
  it("follows the xoshiro128** reference sequence from state [1, 2, 3, 4]", () => {
    const rng = Rng.fromState([1, 2, 3, 4]);
    expect([rng.nextUint32(), rng.nextUint32(), rng.nextUint32()]).toEqual([11520, 0, 5927040]);
  });

  it("gives the same sequence for the same seed and a different one for another seed", () => {
    const a = Rng.fromSeed(42);
    const b = Rng.fromSeed(42);
    const c = Rng.fromSeed(43);
    const first = Array.from({ length: 5 }, () => a.nextUint32());
    expect(Array.from({ length: 5 }, () => b.nextUint32())).toEqual(first);
    expect(Array.from({ length: 5 }, () => c.nextUint32())).not.toEqual(first);
  });

  it("resumes exactly from a saved state", () => {
    const rng = Rng.fromSeed(7);
    for (let i = 0; i < 10; i++) rng.nextFloat();
    const resumed = Rng.fromState(rng.state());
    expect(Array.from({ length: 5 }, () => resumed.nextFloat())).toEqual(Array.from({ length: 5 }, () => rng.nextFloat()));
  });

  it("draws uniform floats in range with the expected mean and integers below n", () => {
    const rng = Rng.fromSeed(1);
    const values = rng.fillUniform(new Float32Array(20000), -2, 2);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(-2);
    expect(Math.max(...values)).toBeLessThan(2);
    expect(Math.abs(values.reduce((sum, v) => sum + v, 0) / values.length)).toBeLessThan(0.05);
    const counts = [0, 0, 0];
    for (let i = 0; i < 3000; i++) counts[rng.nextInt(3)]! += 1;
    for (const count of counts) expect(count).toBeGreaterThan(900);
  });

  it("rejects an invalid state", () => {
    expect(() => Rng.fromState([0, 0, 0, 0])).toThrow("random state must not be all zeros");
    expect(() => Rng.fromState([1, 2, 3])).toThrow("random state must be four unsigned 32-bit integers");
  });
});
