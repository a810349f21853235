import { existsSync } from "node:fs";
import { defineConfig } from "vitest/config";

// `unit` tests pure logic and needs nothing running; its trainer tests compute on wasm.
// `unit-tensorflow` runs the trainer's numeric tests again on the native TensorFlow backend,
// when `npm run native` has built it (.ci/run does): forward passes and gradients against the
// float64 reference, training and resume. `integration` runs against a real kube-apiserver +
// etcd and a real MinIO, which its global setup builds (once, cached) and starts on loopback.
const NATIVE_MARKER = "node_modules/@tensorflow/tfjs-node/deps/kubetune-native.json";
const NUMERIC_TESTS = [
  "trainer/backend/gradients.test.ts",
  "trainer/backend/linear.test.ts",
  "trainer/backend/recompute.test.ts",
  "trainer/model/**/*.test.ts",
  "trainer/methods/**/*.test.ts",
  "trainer/objectives/**/*.test.ts",
  "trainer/train/**/*.test.ts",
];
const nativeBuilt = existsSync(NATIVE_MARKER);
if (!nativeBuilt && !process.env.CI) {
  console.warn("vitest: the native TensorFlow backend is not built (npm run native); the trainer's numeric tests run on wasm only");
}

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
          env: { KUBETUNE_BACKEND: "wasm" },
          testTimeout: 60_000,
        },
      },
      ...(nativeBuilt
        ? [
            {
              extends: true as const,
              test: {
                name: "unit-tensorflow",
                include: NUMERIC_TESTS,
                env: { KUBETUNE_BACKEND: "tensorflow" },
                testTimeout: 120_000,
              },
            },
          ]
        : []),
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
