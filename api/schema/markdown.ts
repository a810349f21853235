import type { AnySchema, SchemaDef } from "./schema.ts";

/**
 * Renders a field reference for schema in Markdown: one section per object, in the order a
 * reader meets them, with a table of its fields (type and bounds, default, doc line) and the
 * object's cross-field rules.
 */
export function renderFieldReference(schema: AnySchema, title: string): string {
  const sections: string[] = [];
  visit(schema, "", sections, title);
  return sections.join("\n");
}

function join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

function visit(schema: AnySchema, path: string, sections: string[], title = path): void {
  const def = schema.def;
  if (def.type === "array") return visit(def.items, `${path}[]`, sections);
  if (def.type === "map") return visit(def.values, `${path}.*`, sections);
  if (def.type !== "object") return;
  const lines = [`### \`${title}\``, "", def.doc, ""];
  lines.push("| Field | Type | Default | Description |", "| --- | --- | --- | --- |");
  for (const [key, property] of Object.entries(def.properties)) {
    const name = property.def.required ? `\`${key}\` (required)` : `\`${key}\``;
    const fallback = property.def.hasDefault ? `\`${JSON.stringify(property.def.default)}\`` : "";
    lines.push(`| ${name} | ${cell(typeSummary(property.def, join(path, key)))} | ${cell(fallback)} | ${cell(property.def.doc)} |`);
  }
  // Rules sharing a message (such as immutability, one rule per field) read as one line.
  const fieldsByMessage = new Map<string, string[]>();
  for (const rule of [...def.rules, ...def.transitionRules]) {
    const field = `\`${rule.fieldPath ? join(path, rule.fieldPath.replace(/^\./, "")) : path || title}\``;
    fieldsByMessage.set(rule.message, [...(fieldsByMessage.get(rule.message) ?? []), field]);
  }
  if (fieldsByMessage.size > 0) {
    lines.push("", "Rules:", "");
    for (const [message, fields] of fieldsByMessage) lines.push(`- ${fields.join(", ")}: ${message}`);
  }
  sections.push(lines.join("\n") + "\n");
  for (const [key, property] of Object.entries(def.properties)) visit(property, join(path, key), sections);
}

function anchor(path: string): string {
  return path.toLowerCase().replace(/[^a-z0-9 -]/g, "");
}

function link(path: string): string {
  return `[${path}](#${anchor(path)})`;
}

function typeSummary(def: SchemaDef, path: string): string {
  switch (def.type) {
    case "string": {
      if (def.enum) return `one of ${def.enum.map((value) => `\`${value}\``).join(", ")}`;
      const parts = [def.format === "date-time" ? "timestamp (RFC 3339)" : "string"];
      if (def.patternHint) parts.push(def.patternHint);
      else if (def.pattern) parts.push(`matching \`${def.pattern}\``);
      if (def.minLength === 1) parts.push("not empty");
      else if (def.minLength !== undefined && def.minLength > 1) parts.push(`at least ${def.minLength} characters`);
      if (def.maxLength !== undefined) parts.push(`at most ${def.maxLength} characters`);
      return parts.join(", ");
    }
    case "integer":
    case "number": {
      const parts: string[] = [def.type];
      if (def.minimum !== undefined) parts.push(`${def.exclusiveMinimum ? ">" : ">="} ${def.minimum}`);
      if (def.maximum !== undefined) parts.push(`${def.exclusiveMaximum ? "<" : "<="} ${def.maximum}`);
      return parts.join(", ");
    }
    case "boolean":
      return "boolean";
    case "quantity":
      return "quantity (e.g. `500m`, `4`, `16Gi`)";
    case "array": {
      const itemType = def.items.def.type === "object" ? `objects (${link(`${path}[]`)})` : typeSummary(def.items.def, `${path}[]`);
      const bounds = `${def.minItems ?? 0}–${def.maxItems} items${def.listType === "set" ? ", unique" : ""}`;
      return `list of ${itemType}; ${bounds}`;
    }
    case "object":
      return `object (${link(path)})`;
    case "map":
      return `map of ${typeSummary(def.values.def, `${path}.*`)}; at most ${def.maxProperties} entries`;
    case "freeform":
      return "object (kept as written)";
    case "objectMeta":
      return "ObjectMeta";
  }
}

function cell(text: string): string {
  return text.replace(/\|/g, "\\|");
}
