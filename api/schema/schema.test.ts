import { describe, expect, expectTypeOf, it } from "vitest";
import { checkTransition, checkValue } from "./check.ts";
import { applySchemaDefaults } from "./defaults.ts";
import { toOpenApi } from "./openapi.ts";
import * as s from "./schema.ts";
import type { Infer, InferDefaulted, Problem } from "./schema.ts";

const job = s
  .object("A job.", {
    name: s.string("Its name.", { minLength: 1, maxLength: 8, pattern: "^[a-z]+$", patternHint: "lowercase letters" }).required(),
    size: s.integer("How many.", { minimum: 1, maximum: 10 }).default(2),
    rate: s.number("How fast.", { minimum: 0, exclusiveMinimum: true }),
    mode: s.enumeration("Which way.", ["fast", "slow"]).default("fast"),
    tags: s.array("Labels.", s.string("A label.", { maxLength: 8 }), { maxItems: 3, listType: "set" }),
    memory: s.quantity("Memory."),
    limits: s
      .object("Limits.", {
        low: s.integer("Low.").default(1),
        high: s.integer("High."),
      })
      .rule({
        cel: "!has(self.high) || self.high >= self.low",
        check: (self) => self.high === undefined || self.high >= self.low,
        message: "must be >= low",
        fieldPath: ".high",
      })
      .default({}),
    extra: s.freeform("Anything."),
  })
  .transitionRule({
    cel: "self.name == oldSelf.name",
    check: (self, oldSelf) => self.name === oldSelf.name,
    message: "is immutable",
    fieldPath: ".name",
  });

function problemsOf(value: unknown): Problem[] {
  const problems: Problem[] = [];
  checkValue(job, applySchemaDefaults(job, value), "", problems);
  return problems;
}

describe("schema types", () => {
  it("infers required, optional and defaulted fields", () => {
    expectTypeOf<Infer<typeof job>>().toEqualTypeOf<{
      name: string;
      size?: number;
      rate?: number;
      mode?: "fast" | "slow";
      tags?: string[];
      memory?: string | number;
      limits?: { low?: number; high?: number };
      extra?: Record<string, unknown>;
    }>();
    expectTypeOf<InferDefaulted<typeof job>>().toEqualTypeOf<{
      name: string;
      size: number;
      mode: "fast" | "slow";
      limits: { low: number; high?: number };
      rate?: number;
      tags?: string[];
      memory?: string | number;
      extra?: Record<string, unknown>;
    }>();
  });
});

describe("checkValue", () => {
  it("accepts a value that fits", () => {
    expect(problemsOf({ name: "abc", size: 3, rate: 0.5, tags: ["a", "b"], memory: "16Gi", limits: { low: 1, high: 2 }, extra: { x: [1] } })).toEqual([]);
  });

  it("names each field with a wrong type, bound, enum or pattern", () => {
    expect(problemsOf({ name: "ABC", size: 0, rate: 0, mode: "medium", memory: "lots" })).toEqual([
      { path: "name", message: 'must be lowercase letters, not "ABC"' },
      { path: "size", message: "must be >= 1" },
      { path: "rate", message: "must be > 0" },
      { path: "mode", message: 'must be one of fast, slow, not "medium"' },
      { path: "memory", message: 'must be a Kubernetes quantity such as 500m, 4 or 16Gi, not the string "lots"' },
    ]);
    expect(problemsOf({ name: "abc", size: 2.5 })).toEqual([{ path: "size", message: "must be an integer, not 2.5" }]);
    expect(problemsOf({ name: "abc", size: "2" })).toEqual([{ path: "size", message: 'must be a number, not the string "2"' }]);
    expect(problemsOf({ name: "abcdefghi" })).toEqual([{ path: "name", message: "must be at most 8 characters long" }]);
  });

  it("reports missing required fields and unknown fields", () => {
    expect(problemsOf({ nmae: "abc", limits: { lo: 1 } })).toEqual([
      { path: "nmae", message: "unknown field" },
      { path: "name", message: "is required" },
      { path: "limits.lo", message: "unknown field" },
    ]);
  });

  it("reports keys named like Object.prototype's members as unknown fields", () => {
    expect(problemsOf(JSON.parse('{"name": "abc", "__proto__": {"size": 0}, "constructor": 1}'))).toEqual([
      { path: "__proto__", message: "unknown field" },
      { path: "constructor", message: "unknown field" },
    ]);
  });

  it("treats null as absent, as the API server prunes it", () => {
    expect(problemsOf({ name: "abc", size: null, rate: null })).toEqual([]);
    expect(problemsOf({ name: null })).toEqual([{ path: "name", message: "is required" }]);
  });

  it("refuses duplicates in a set, too many items and quantities that are not integers", () => {
    expect(problemsOf({ name: "abc", tags: ["a", "a"] })).toEqual([{ path: "tags[1]", message: 'duplicate value "a"' }]);
    expect(problemsOf({ name: "abc", tags: ["a", "b", "c", "d"] })).toEqual([{ path: "tags", message: "must have at most 3 items" }]);
    expect(problemsOf({ name: "abc", memory: 1.5 })).toEqual([
      { path: "memory", message: "must be a Kubernetes quantity such as 500m, 4 or 16Gi, not number 1.5" },
    ]);
  });

  it("checks rules on the defaulted value, at the rule's fieldPath", () => {
    expect(problemsOf({ name: "abc", limits: { high: 0 } })).toEqual([{ path: "limits.high", message: "must be >= low" }]);
    expect(problemsOf({ name: "abc", limits: { high: 1 } })).toEqual([]);
  });

  it("skips a rule on a value that already has problems", () => {
    expect(problemsOf({ name: "abc", limits: { low: "x", high: 0 } })).toEqual([{ path: "limits.low", message: 'must be a number, not the string "x"' }]);
  });
});

describe("checkTransition", () => {
  it("applies transition rules to the stored and the new value", () => {
    const problems: Problem[] = [];
    checkTransition(job, { name: "abc" }, { name: "abd" }, "", problems);
    expect(problems).toEqual([{ path: "name", message: "is immutable" }]);
  });
});

describe("applySchemaDefaults", () => {
  it("fills defaults, the nested ones of a defaulted object too, and leaves its input alone", () => {
    const input = { name: "abc", rate: null, unknown: 1 };
    expect(applySchemaDefaults(job, input as never)).toEqual({ name: "abc", size: 2, mode: "fast", limits: { low: 1 }, unknown: 1 });
    expect(input).toEqual({ name: "abc", rate: null, unknown: 1 });
  });
});

describe("toOpenApi", () => {
  it("renders a structural schema with doc lines, bounds, defaults and rules", () => {
    const schema = toOpenApi(job);
    expect(schema.required).toEqual(["name"]);
    expect(schema.properties?.size).toEqual({ description: "How many.", type: "integer", minimum: 1, maximum: 10, default: 2 });
    expect(schema.properties?.rate).toEqual({ description: "How fast.", type: "number", minimum: 0, exclusiveMinimum: true });
    expect(schema.properties?.tags).toMatchObject({ type: "array", maxItems: 3, "x-kubernetes-list-type": "set", items: { type: "string", maxLength: 8 } });
    expect(schema.properties?.memory).toMatchObject({ anyOf: [{ type: "integer" }, { type: "string" }], "x-kubernetes-int-or-string": true });
    expect(schema.properties?.extra).toEqual({ description: "Anything.", type: "object", "x-kubernetes-preserve-unknown-fields": true });
    expect(schema.properties?.limits?.["x-kubernetes-validations"]).toEqual([
      { rule: "!has(self.high) || self.high >= self.low", message: "must be >= low", fieldPath: ".high" },
    ]);
    expect(schema["x-kubernetes-validations"]).toEqual([{ rule: "self.name == oldSelf.name", message: "is immutable", fieldPath: ".name" }]);
  });
});
