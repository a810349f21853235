import { isPlainObject } from "./check.ts";
import type { AnySchema, Infer, InferDefaulted } from "./schema.ts";

/**
 * Returns a copy of value with the schema's defaults filled in, as the API server does before
 * it validates or stores an object: an absent (or null) field with a default takes it, and the
 * defaults inside it apply in turn; null fields without a default are dropped. Fields the
 * schema does not know are kept, so that a later check can report them. The input is not changed.
 */
export function applySchemaDefaults<S extends AnySchema>(schema: S, value: Infer<S>): InferDefaulted<S>;
export function applySchemaDefaults(schema: AnySchema, value: unknown): unknown;
export function applySchemaDefaults(schema: AnySchema, value: unknown): unknown {
  const def = schema.def;
  switch (def.type) {
    case "object": {
      if (!isPlainObject(value)) return value;
      const result: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(value)) {
        const property = Object.hasOwn(def.properties, key) ? def.properties[key] : undefined;
        // defineProperty, so that a key such as __proto__ stays a field (and is reported as unknown).
        if (!property) Object.defineProperty(result, key, { value: structuredClone(field), enumerable: true, writable: true, configurable: true });
        else if (field !== null && field !== undefined) result[key] = applySchemaDefaults(property, field);
      }
      for (const [key, property] of Object.entries(def.properties)) {
        if (result[key] === undefined && property.def.hasDefault) {
          result[key] = applySchemaDefaults(property, structuredClone(property.def.default));
        }
      }
      return result;
    }
    case "array":
      return Array.isArray(value) ? value.map((item) => applySchemaDefaults(def.items, item)) : value;
    case "map":
      return isPlainObject(value)
        ? Object.fromEntries(
            Object.entries(value)
              .filter(([, entry]) => entry !== null && entry !== undefined)
              .map(([key, entry]) => [key, applySchemaDefaults(def.values, entry)]),
          )
        : value;
    default:
      return structuredClone(value);
  }
}
