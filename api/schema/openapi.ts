import { QUANTITY_PATTERN } from "./check.ts";
import type { AnySchema } from "./schema.ts";

/** A structural OpenAPI v3 schema node as apiextensions.k8s.io/v1 stores it (the subset used here). */
export interface JSONSchemaProps {
  description?: string;
  type?: string;
  format?: string;
  enum?: readonly string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  maxProperties?: number;
  anyOf?: JSONSchemaProps[];
  items?: JSONSchemaProps;
  properties?: Record<string, JSONSchemaProps>;
  additionalProperties?: JSONSchemaProps;
  required?: string[];
  "x-kubernetes-int-or-string"?: boolean;
  "x-kubernetes-preserve-unknown-fields"?: boolean;
  "x-kubernetes-list-type"?: string;
  "x-kubernetes-list-map-keys"?: readonly string[];
  "x-kubernetes-validations"?: ValidationRule[];
}

export interface ValidationRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: string;
}

/** Renders a schema as the CRD's openAPIV3Schema: descriptions are the doc lines. */
export function toOpenApi(schema: AnySchema): JSONSchemaProps {
  const def = schema.def;
  const out: JSONSchemaProps = { description: def.doc };
  switch (def.type) {
    case "string":
      out.type = "string";
      if (def.format) out.format = def.format;
      if (def.enum) out.enum = def.enum;
      if (def.minLength !== undefined) out.minLength = def.minLength;
      if (def.maxLength !== undefined) out.maxLength = def.maxLength;
      if (def.pattern !== undefined) out.pattern = def.pattern;
      break;
    case "integer":
    case "number":
      out.type = def.type;
      if (def.minimum !== undefined) out.minimum = def.minimum;
      if (def.exclusiveMinimum) out.exclusiveMinimum = true;
      if (def.maximum !== undefined) out.maximum = def.maximum;
      if (def.exclusiveMaximum) out.exclusiveMaximum = true;
      break;
    case "boolean":
      out.type = "boolean";
      break;
    case "quantity":
      out.anyOf = [{ type: "integer" }, { type: "string" }];
      out.pattern = QUANTITY_PATTERN;
      out["x-kubernetes-int-or-string"] = true;
      break;
    case "array":
      out.type = "array";
      out.items = toOpenApi(def.items);
      if (def.minItems !== undefined) out.minItems = def.minItems;
      out.maxItems = def.maxItems;
      if (def.listType) out["x-kubernetes-list-type"] = def.listType;
      if (def.listMapKeys) out["x-kubernetes-list-map-keys"] = def.listMapKeys;
      break;
    case "object": {
      out.type = "object";
      out.properties = Object.fromEntries(Object.entries(def.properties).map(([key, property]) => [key, toOpenApi(property)]));
      const required = Object.entries(def.properties)
        .filter(([, property]) => property.def.required)
        .map(([key]) => key);
      if (required.length > 0) out.required = required;
      break;
    }
    case "map":
      out.type = "object";
      out.additionalProperties = toOpenApi(def.values);
      out.maxProperties = def.maxProperties;
      break;
    case "freeform":
      out.type = "object";
      out["x-kubernetes-preserve-unknown-fields"] = true;
      break;
    case "objectMeta":
      // The API server owns metadata's schema and refuses a CRD that says more about it.
      return { type: "object" };
  }
  if (def.hasDefault) out.default = def.default;
  const rules: ValidationRule[] = [
    ...def.rules.map((rule) => ({
      rule: rule.cel,
      message: rule.message,
      ...(rule.messageExpression ? { messageExpression: rule.messageExpression.cel } : {}),
      ...(rule.fieldPath ? { fieldPath: rule.fieldPath } : {}),
      ...(rule.reason ? { reason: rule.reason } : {}),
    })),
    ...def.transitionRules.map((rule) => ({
      rule: rule.cel,
      message: rule.message,
      ...(rule.fieldPath ? { fieldPath: rule.fieldPath } : {}),
      ...(rule.reason ? { reason: rule.reason } : {}),
    })),
  ];
  if (rules.length > 0) out["x-kubernetes-validations"] = rules;
  return out;
}
