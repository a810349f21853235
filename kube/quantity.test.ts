import { describe, expect, it } from "vitest";
import { parseQuantity } from "./quantity.ts";

describe("parseQuantity", () => {
  it.each([
    ["500m", 0.5],
    ["2", 2],
    ["1Gi", 2 ** 30],
    ["512Mi", 512 * 2 ** 20],
    ["1G", 1e9],
    ["1.5", 1.5],
    ["1e3", 1000],
    [4, 4],
  ])("reads %s as %d", (input, expected) => {
    expect(parseQuantity(input)).toBe(expected);
  });

  it.each(["", "abc", "1Qi", "1.2.3"])("rejects %j", (input) => {
    expect(() => parseQuantity(input)).toThrow(/not a Kubernetes quantity/);
  });
});
