import { describe } from "vitest";
import { objectStoreContract } from "../../storage/object-store.contract.ts";
import { MemoryObjectStore } from "./memory-store.ts";

// The test store must behave like the real ones, or tests built on it prove nothing.
describe("MemoryObjectStore", () => {
  objectStoreContract(async () => new MemoryObjectStore());
});
