// A small typed schema builder for Kubernetes API types.
//
// One builder call per field carries everything about that field: its doc line, type, default,
// bounds, pattern and whether it is required; objects carry their cross-field rules as a CEL
// expression together with the same rule in TypeScript. The TypeScript types are inferred from
// the builder (Infer / InferDefaulted), the CRD schema is rendered from it (openapi.ts), values
// are checked against it (check.ts), defaulted by it (defaults.ts) and documented from it
// (markdown.ts), so none of these can drift from the others.

/** One thing wrong with a value: where (a field path such as spec.method.lora.r) and what. */
export interface Problem {
  path: string;
  message: string;
}

/** The `reason` a CEL rule reports; the API server turns it into the error's type. */
export type RuleReason = "FieldValueInvalid" | "FieldValueForbidden" | "FieldValueRequired" | "FieldValueDuplicate";

/**
 * A cross-field rule on an object: `cel` for the API server, `check` for everyone else. Both
 * see the value after the schema's defaults are applied, as the API server does.
 */
export interface Rule<T> {
  /** CEL expression over `self`; true when the value is valid. */
  cel: string;
  /** The same predicate in TypeScript. */
  check: (self: T) => boolean;
  /** The message when the rule fails. */
  message: string;
  /** A message naming the offending values: CEL for the API server, TypeScript for `validate`. */
  messageExpression?: { cel: string; render: (self: T) => string };
  /** The field to blame, relative to the object, e.g. ".dataset.format"; the object itself when unset. */
  fieldPath?: string;
  reason?: RuleReason;
}

/** A rule comparing a new value with the stored one (`oldSelf`), checked on updates only. */
export interface TransitionRule<T> {
  cel: string;
  check: (self: T, oldSelf: T) => boolean;
  message: string;
  fieldPath?: string;
  reason?: RuleReason;
}

export interface StringOptions {
  minLength?: number;
  maxLength?: number;
  /** A regular expression in the common subset of ECMAScript and RE2 (the API server's). */
  pattern?: string;
  /** What the pattern means, for messages: "must be <patternHint>". */
  patternHint?: string;
  format?: "date-time";
}

export interface NumberOptions {
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
}

export interface ArrayOptions {
  minItems?: number;
  maxItems: number;
  /** set: items unique; map: items unique by listMapKeys; atomic: replaced as a whole. */
  listType?: "atomic" | "set" | "map";
  listMapKeys?: readonly string[];
}

export interface MapOptions {
  maxProperties: number;
}

interface Common {
  doc: string;
  required: boolean;
  hasDefault: boolean;
  default?: unknown;
  rules: readonly Rule<never>[];
  transitionRules: readonly TransitionRule<never>[];
}

/** The runtime description of one field; what every consumer of a schema walks. */
export type SchemaDef = Common &
  (
    | ({ type: "string"; enum?: readonly string[] } & StringOptions)
    | ({ type: "integer" | "number" } & NumberOptions)
    | { type: "boolean" }
    | { type: "quantity" }
    | ({ type: "array"; items: AnySchema } & ArrayOptions)
    | { type: "object"; properties: Readonly<Record<string, AnySchema>> }
    | ({ type: "map"; values: AnySchema } & MapOptions)
    | { type: "freeform" }
    | { type: "objectMeta" }
  );

/**
 * A field's schema. In: the type as written by a user; Out: the type once the schema's defaults
 * are applied; Req and Def say whether the field is required or defaulted in its parent object.
 */
export class Schema<In, Out = In, Req extends boolean = false, Def extends boolean = false> {
  declare readonly _in: In;
  declare readonly _out: Out;
  declare readonly _required: Req;
  declare readonly _defaulted: Def;

  constructor(readonly def: SchemaDef) {}

  /** The parent object is invalid without this field. */
  required(): Schema<In, Out, true, Def> {
    return new Schema({ ...this.def, required: true });
  }

  /** The value the field takes when it is absent (applied by the API server too). */
  default(value: In): Schema<In, Out, Req, true> {
    return new Schema({ ...this.def, hasDefault: true, default: value });
  }

  /** Adds a cross-field rule over this (object) value. */
  rule(rule: Rule<Out>): Schema<In, Out, Req, Def> {
    return new Schema({ ...this.def, rules: [...this.def.rules, rule as Rule<never>] });
  }

  /** Adds a rule comparing this value with its stored version on updates. */
  transitionRule(rule: TransitionRule<Out>): Schema<In, Out, Req, Def> {
    return new Schema({ ...this.def, transitionRules: [...this.def.transitionRules, rule as TransitionRule<never>] });
  }
}

/** Any schema, whatever its types. */
export type AnySchema = Schema<unknown, unknown, boolean, boolean>;
/** The properties of an object schema. */
export type Shape = Record<string, AnySchema>;

/** The type of a value as a user writes it. */
export type Infer<S extends AnySchema> = S["_in"];
/** The type of a value once the schema's defaults are applied. */
export type InferDefaulted<S extends AnySchema> = S["_out"];

type Simplify<T> = { [K in keyof T]: T[K] } & {};
type RequiredKeys<P extends Shape> = { [K in keyof P]: P[K]["_required"] extends true ? K : never }[keyof P];
type PresentKeys<P extends Shape> = {
  [K in keyof P]: P[K]["_required"] extends true ? K : P[K]["_defaulted"] extends true ? K : never;
}[keyof P];
type InputOf<P extends Shape> = Simplify<
  { [K in RequiredKeys<P>]: P[K]["_in"] } & { [K in Exclude<keyof P, RequiredKeys<P>>]?: P[K]["_in"] }
>;
type OutputOf<P extends Shape> = Simplify<
  { [K in PresentKeys<P>]: P[K]["_out"] } & { [K in Exclude<keyof P, PresentKeys<P>>]?: P[K]["_out"] }
>;

/** The parts of metav1.ObjectMeta a client sets or reads; the API server owns the rest. */
export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }[];
  [field: string]: unknown;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

function make<In, Out = In>(doc: string, def: DistributiveOmit<SchemaDef, keyof Common>): Schema<In, Out> {
  return new Schema<In, Out>({ required: false, hasDefault: false, rules: [], transitionRules: [], ...def, doc } as SchemaDef);
}

export function string(doc: string, options: StringOptions = {}): Schema<string> {
  return make(doc, { type: "string", ...options });
}

/** A string restricted to the given values. */
export function enumeration<const E extends readonly [string, ...string[]]>(doc: string, values: E): Schema<E[number]> {
  return make(doc, { type: "string", enum: values });
}

/** An RFC 3339 timestamp, as metav1.Time serialises. */
export function dateTime(doc: string): Schema<string> {
  return make(doc, { type: "string", format: "date-time" });
}

export function integer(doc: string, options: NumberOptions = {}): Schema<number> {
  return make(doc, { type: "integer", ...options });
}

export function number(doc: string, options: NumberOptions = {}): Schema<number> {
  return make(doc, { type: "number", ...options });
}

export function boolean(doc: string): Schema<boolean> {
  return make(doc, { type: "boolean" });
}

/** A Kubernetes resource quantity ("500m", "16Gi", 2): an int-or-string. */
export function quantity(doc: string): Schema<string | number> {
  return make(doc, { type: "quantity" });
}

export function array<S extends AnySchema>(doc: string, items: S, options: ArrayOptions): Schema<Infer<S>[], InferDefaulted<S>[]> {
  return make(doc, { type: "array", items, ...options });
}

export function object<P extends Shape>(doc: string, properties: P): Schema<InputOf<P>, OutputOf<P>> {
  return make(doc, { type: "object", properties });
}

/** The properties of an object schema. */
export function propertiesOf(schema: AnySchema): Readonly<Record<string, AnySchema>> {
  if (schema.def.type !== "object") throw new TypeError(`not an object schema: ${schema.def.doc}`);
  return schema.def.properties;
}

/** An object with arbitrary keys and values of one schema (additionalProperties). */
export function map<S extends AnySchema>(
  doc: string,
  values: S,
  options: MapOptions,
): Schema<Record<string, Infer<S>>, Record<string, InferDefaulted<S>>> {
  return make(doc, { type: "map", values, ...options });
}

/** An object kept as written (x-kubernetes-preserve-unknown-fields), e.g. a core/v1 Affinity. */
export function freeform(doc: string): Schema<Record<string, unknown>> {
  return make(doc, { type: "freeform" });
}

/** The standard object metadata, whose schema the API server owns. */
export function objectMeta(doc: string): Schema<ObjectMeta> {
  return make(doc, { type: "objectMeta" });
}
