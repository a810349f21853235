# One image for the operator, the preflight check and the GPU trainer:
#   kubetune operator | kubetune preflight | kubetune train
# Built where the internet is reachable: @tensorflow/tfjs-node-gpu downloads libtensorflow
# (CUDA) in its install script. Without it the trainer falls back to the wasm CPU backend.
FROM nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04 AS runtime-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://deb.nodesource.com/setup_22.x | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && apt-get purge -y curl gnupg && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

FROM runtime-base AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Install scripts must run here so tfjs-node-gpu fetches its native library.
RUN npm ci --omit=dev --no-audit --no-fund --foreground-scripts \
 && node -e "require('@tensorflow/tfjs-node-gpu')" \
 && npm cache clean --force

FROM runtime-base
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY api ./api
COPY cli ./cli
COPY kube ./kube
COPY operator ./operator
COPY storage ./storage
COPY trainer ./trainer
# Non-root, and nothing under /app is writable: the pod runs with a read-only root file
# system and gets its scratch space from an emptyDir mounted at /scratch.
USER 65532:65532
ENV HOME=/scratch TMPDIR=/scratch NODE_ENV=production
ENTRYPOINT ["node", "/app/bin/kubetune.mjs"]
CMD ["--help"]
