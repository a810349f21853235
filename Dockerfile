# kubetune's images, one target each:
#   operator     kubetune operator | kubetune preflight: no TensorFlow, small
#   trainer-cpu  kubetune train on native TensorFlow (the tensorflow-cpu wheel's C library)
#   trainer-gpu  kubetune train on native TensorFlow with CUDA 12 (the tensorflow wheel and
#                NVIDIA's CUDA 12 wheels); the node needs only the NVIDIA driver, no CUDA base image
#
#   docker build --target operator    -t ghcr.io/kubetune/kubetune-operator:0.1.0 .
#   docker build --target trainer-cpu -t ghcr.io/kubetune/kubetune-trainer-cpu:0.1.0 .
#   docker build --target trainer-gpu -t ghcr.io/kubetune/kubetune-trainer-gpu:0.1.0 .
#
# The builder stages download npm packages and Python wheels and compile the TensorFlow binding
# with the same script as `npm run native`; the final stages hold no compilers, no pip and no
# package caches.

# Node 20 on Debian bookworm, slim. Pinned to the exact release; where images are published, pin
# the digest as well: --build-arg NODE_IMAGE=node:20.20.2-bookworm-slim@sha256:<digest>.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# Production dependencies from the lock file. .npmrc sets ignore-scripts, so
# @tensorflow/tfjs-node's install script (a libtensorflow download) never runs.
FROM ${NODE_IMAGE} AS dependencies
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-audit --no-fund

# The operator never loads TensorFlow: drop @tensorflow/tfjs-node and what only it needs
# (package.json and the lock file stay as they are; without --omit=dev again, npm would add the
# dev dependencies on the way).
FROM dependencies AS operator-dependencies
RUN --mount=type=cache,target=/root/.npm \
    npm uninstall --no-save --omit=dev --no-audit --no-fund @tensorflow/tfjs-node \
 && test ! -e node_modules/@tensorflow/tfjs-node

# What scripts/native.sh needs: python3 with pip (to download the TensorFlow wheel), g++ and
# make (node-gyp builds the binding against Node's own headers, which the node image ships).
FROM dependencies AS native-toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip g++ make \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/native.sh scripts/native-versions.env ./scripts/
# Wheels and finished builds survive between image builds in a cache mount; --copy puts real
# files (not links into that cache) under node_modules/@tensorflow/tfjs-node/{deps,lib}.
ENV KUBETUNE_CACHE_DIR=/cache

FROM native-toolchain AS native-cpu
RUN --mount=type=cache,target=/cache,sharing=locked bash scripts/native.sh --copy

# TensorFlow's libraries find the CUDA ones in deps/nvidia/<component>/lib through their own
# RUNPATH ($ORIGIN/../nvidia/<component>/lib), the layout the wheels have in site-packages.
FROM native-toolchain AS native-gpu
RUN --mount=type=cache,target=/cache,sharing=locked bash scripts/native.sh --gpu --copy

# The sources: TypeScript run through tsx, no build step (but for the operator's bundle, below).
# Tests stay out (.dockerignore).
FROM scratch AS sources
WORKDIR /app
COPY package.json ./
COPY bin ./bin
COPY api ./api
COPY cli ./cli
COPY kube ./kube
COPY localcluster ./localcluster
COPY operator ./operator
COPY storage ./storage
COPY trainer ./trainer

# `kubetune operator` compiled into one plain-JavaScript file, dist/operator.mjs, from the same
# sources the images ship (scripts/build-operator.mjs; esbuild comes with tsx, a production
# dependency). Run without tsx's loader, the operator needs about half the memory.
FROM dependencies AS operator-bundle
COPY --from=sources /app ./
COPY scripts/build-operator.mjs ./scripts/
RUN node scripts/build-operator.mjs

# What the three images share. Non-root, and nothing under /app is writable: pods run with a
# read-only root file system and get their scratch space from an emptyDir mounted at /scratch
# (the folder exists, owned by 65532, for a plain `docker run` too).
FROM ${NODE_IMAGE} AS runtime
RUN install -d -o 65532 -g 65532 -m 0700 /scratch
WORKDIR /app
USER 65532:65532
ENV HOME=/scratch TMPDIR=/scratch NODE_ENV=production
ENTRYPOINT ["node", "/app/bin/kubetune.mjs"]
CMD ["--help"]

# node_modules before the sources: a source change leaves the large layer as it was.
FROM runtime AS trainer-cpu
COPY --from=native-cpu /app/node_modules ./node_modules
COPY --from=sources /app ./

FROM runtime AS trainer-gpu
COPY --from=native-gpu /app/node_modules ./node_modules
COPY --from=sources /app ./
# The NVIDIA container runtime mounts the driver's CUDA library (compute) and nvidia-smi
# (utility) only when asked; the device plugin sets NVIDIA_VISIBLE_DEVICES per pod, so the image
# does not.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Last, so that a plain `docker build .` makes the small image. bin/kubetune.mjs runs the bundle
# for `kubetune operator`; `kubetune preflight` runs the sources. The V8 flags are
# OPERATOR_NODE_FLAGS of bin/operator-launch.mjs (why these: there), which bench/operator.ts runs
# the operator with too; tests/dockerfile.test.ts holds this ENTRYPOINT to that list.
FROM runtime AS operator
COPY --from=operator-dependencies /app/node_modules ./node_modules
COPY --from=sources /app ./
COPY --from=operator-bundle /app/dist ./dist
ENTRYPOINT ["node", "--max-semi-space-size=1", "--optimize-for-size", "/app/bin/kubetune.mjs"]
