import type { AnySchema, Problem, SchemaDef } from "./schema.ts";

// The API server's own grammar for quantities, less the sign: a negative amount of CPU or
// memory is never meant.
export const QUANTITY_PATTERN = "^(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$";
const quantityRegExp = new RegExp(QUANTITY_PATTERN);
const dateTimeRegExp = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Joins a field path the way the API server's schema errors write it: a.b, a[0], and map keys as they are (nodeSelector.kubernetes.io/arch). */
export function childPath(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return path === "" ? key : `${path}.${key}`;
}

/** A path plus a rule's relative fieldPath (".dataset.format"). */
export function joinFieldPath(path: string, fieldPath: string | undefined): string {
  if (!fieldPath) return path;
  const relative = fieldPath.replace(/^\./, "");
  return path === "" ? relative : `${path}.${relative}`;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  return `${typeof value} ${String(value)}`;
}

const regExps = new Map<string, RegExp>();

function compiled(pattern: string): RegExp {
  let regExp = regExps.get(pattern);
  if (!regExp) regExps.set(pattern, (regExp = new RegExp(pattern)));
  return regExp;
}

/**
 * Checks value against schema, appending a Problem for every type, enum, range, pattern,
 * required-field, unknown-field and rule violation. Expects the schema's defaults to be
 * applied already (see applySchemaDefaults), as the API server validates defaulted objects.
 * Absent and null values are left to the parent: null means absent, as the API server prunes it.
 */
export function checkValue(schema: AnySchema, value: unknown, path: string, problems: Problem[]): void {
  const before = problems.length;
  checkShape(schema.def, value, path, problems);
  // A rule reads several fields; on a value with its own problems it would only add noise.
  if (problems.length !== before) return;
  for (const rule of schema.def.rules) {
    const self = value as never;
    if (!rule.check(self)) {
      const message = rule.messageExpression ? rule.messageExpression.render(self) : rule.message;
      problems.push({ path: joinFieldPath(path, rule.fieldPath), message });
    }
  }
}

function checkShape(def: SchemaDef, value: unknown, path: string, problems: Problem[]): void {
  const problem = (message: string, at = path) => problems.push({ path: at, message });
  switch (def.type) {
    case "string": {
      if (typeof value !== "string") return void problem(`must be a string, not ${describe(value)}`);
      if (def.enum && !def.enum.includes(value)) {
        return void problem(`must be one of ${def.enum.join(", ")}, not ${JSON.stringify(value)}`);
      }
      if (def.minLength !== undefined && value.length < def.minLength) {
        return void problem(def.minLength === 1 ? "must not be empty" : `must be at least ${def.minLength} characters long`);
      }
      if (def.maxLength !== undefined && value.length > def.maxLength) {
        return void problem(`must be at most ${def.maxLength} characters long`);
      }
      if (def.pattern !== undefined && !compiled(def.pattern).test(value)) {
        return void problem(def.patternHint ? `must be ${def.patternHint}, not ${JSON.stringify(value)}` : `must match ${def.pattern}`);
      }
      if (def.format === "date-time" && !dateTimeRegExp.test(value)) {
        return void problem(`must be an RFC 3339 timestamp such as 2025-01-31T12:00:00Z, not ${JSON.stringify(value)}`);
      }
      return;
    }
    case "integer":
    case "number": {
      if (typeof value !== "number" || !Number.isFinite(value)) return void problem(`must be a number, not ${describe(value)}`);
      if (def.type === "integer" && !Number.isInteger(value)) return void problem(`must be an integer, not ${value}`);
      if (def.minimum !== undefined) {
        const ok = def.exclusiveMinimum ? value > def.minimum : value >= def.minimum;
        if (!ok) return void problem(`must be ${def.exclusiveMinimum ? ">" : ">="} ${def.minimum}`);
      }
      if (def.maximum !== undefined) {
        const ok = def.exclusiveMaximum ? value < def.maximum : value <= def.maximum;
        if (!ok) return void problem(`must be ${def.exclusiveMaximum ? "<" : "<="} ${def.maximum}`);
      }
      return;
    }
    case "boolean":
      if (typeof value !== "boolean") problem(`must be true or false, not ${describe(value)}`);
      return;
    case "quantity": {
      const ok = (typeof value === "number" && Number.isInteger(value) && value >= 0) || (typeof value === "string" && quantityRegExp.test(value));
      if (!ok) problem(`must be a Kubernetes quantity such as 500m, 4 or 16Gi, not ${describe(value)}`);
      return;
    }
    case "array": {
      if (!Array.isArray(value)) return void problem(`must be a list, not ${describe(value)}`);
      if (def.minItems !== undefined && value.length < def.minItems) {
        return void problem(def.minItems === 1 ? "must not be empty" : `must have at least ${def.minItems} items`);
      }
      if (value.length > def.maxItems) return void problem(`must have at most ${def.maxItems} items`);
      const seen = new Set<string>();
      value.forEach((item, index) => {
        const at = childPath(path, index);
        if (item === null || item === undefined) return void problem("must not be null", at);
        const before = problems.length;
        checkValue(def.items, item, at, problems);
        if (problems.length !== before) return;
        const key = identity(def.listType, def.listMapKeys, item);
        if (key === undefined) return;
        if (seen.has(key)) problem(`duplicate value ${key}`, at);
        seen.add(key);
      });
      return;
    }
    case "object": {
      if (!isPlainObject(value)) return void problem(`must be an object, not ${describe(value)}`);
      for (const key of Object.keys(value)) {
        if (!Object.hasOwn(def.properties, key)) problem("unknown field", childPath(path, key));
      }
      for (const [key, property] of Object.entries(def.properties)) {
        const field = value[key];
        if (field === undefined || field === null) {
          if (property.def.required) problem("is required", childPath(path, key));
        } else {
          checkValue(property, field, childPath(path, key), problems);
        }
      }
      return;
    }
    case "map": {
      if (!isPlainObject(value)) return void problem(`must be an object, not ${describe(value)}`);
      const entries = Object.entries(value).filter(([, entry]) => entry !== null && entry !== undefined);
      if (entries.length > def.maxProperties) return void problem(`must have at most ${def.maxProperties} entries`);
      for (const [key, entry] of entries) checkValue(def.values, entry, childPath(path, key), problems);
      return;
    }
    case "freeform":
      if (!isPlainObject(value)) problem(`must be an object, not ${describe(value)}`);
      return;
    case "objectMeta":
      checkObjectMeta(value, path, problems);
      return;
  }
}

function identity(listType: string | undefined, keys: readonly string[] | undefined, item: unknown): string | undefined {
  if (listType === "set") return JSON.stringify(item);
  if (listType === "map" && keys && isPlainObject(item)) return keys.map((key) => `${key}=${JSON.stringify(item[key])}`).join(",");
  return undefined;
}

function checkObjectMeta(value: unknown, path: string, problems: Problem[]): void {
  const problem = (message: string, at: string) => problems.push({ path: at, message });
  if (!isPlainObject(value)) return void problem(`must be an object, not ${describe(value)}`, path);
  const { name, generateName, namespace } = value;
  if (name === undefined && generateName === undefined) problem("is required", childPath(path, "name"));
  for (const [key, field] of [["name", name], ["generateName", generateName]] as const) {
    if (field === undefined) continue;
    if (typeof field !== "string") problem(`must be a string, not ${describe(field)}`, childPath(path, key));
    else if (field.length > 253 || (key === "name" && !dnsSubdomain.test(field))) {
      problem("must be a lowercase DNS subdomain: letters, digits, '-' and '.', at most 253 characters", childPath(path, key));
    }
  }
  if (namespace !== undefined && (typeof namespace !== "string" || namespace.length > 63 || !dnsLabel.test(namespace))) {
    problem("must be a lowercase DNS label: letters, digits and '-', at most 63 characters", childPath(path, "namespace"));
  }
  for (const key of ["labels", "annotations"]) {
    const entries = value[key];
    if (entries === undefined || entries === null) continue;
    if (!isPlainObject(entries)) {
      problem(`must be an object, not ${describe(entries)}`, childPath(path, key));
      continue;
    }
    for (const [entryKey, entry] of Object.entries(entries)) {
      if (typeof entry !== "string") problem(`must be a string, not ${describe(entry)}`, childPath(childPath(path, key), entryKey));
    }
  }
}

/**
 * Evaluates the transition rules of schema and of its object-valued fields, where both the
 * stored and the new value exist: the updates the API server would refuse.
 */
export function checkTransition(schema: AnySchema, oldValue: unknown, newValue: unknown, path: string, problems: Problem[]): void {
  const def = schema.def;
  if (!isPlainObject(oldValue) || !isPlainObject(newValue)) return;
  for (const rule of def.transitionRules) {
    if (!rule.check(newValue as never, oldValue as never)) problems.push({ path: joinFieldPath(path, rule.fieldPath), message: rule.message });
  }
  if (def.type !== "object") return;
  for (const [key, property] of Object.entries(def.properties)) {
    checkTransition(property, oldValue[key], newValue[key], childPath(path, key), problems);
  }
}
