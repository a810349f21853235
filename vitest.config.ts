import { defineConfig } from "vitest/config";

// Two projects: `unit` tests pure logic and needs nothing running; `integration` runs against
// a real kube-apiserver + etcd and a real MinIO, which its global setup builds (once, cached)
// and starts on loopback.
export default defineConfig({
  test: {
    // The AWS SDK warns on every client that Node 20 support ends in 2027; tests need not repeat it.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" },
    projects: [
      {
        extends: true,
        test: {
          name: "unit",
          include: ["**/*.test.ts"],
          exclude: ["node_modules/**", "tests/integration/**"],
          testTimeout: 60_000,
        },
      },
      {
        extends: true,
        test: {
          name: "integration",
          include: ["tests/integration/**/*.test.ts"],
          globalSetup: ["tests/integration/global-setup.ts"],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          // One shared control plane; files run one at a time so they never race on it.
          fileParallelism: false,
        },
      },
    ],
  },
});
