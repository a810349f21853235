#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, Kubernetes' garbage collector, etcd, MinIO, Helm and the Kueue
# manager from their Go modules and caches them in $KUBETUNE_CACHE_DIR/bin (default ~/.cache/kubetune/bin), keyed by version.
# Prints nothing but errors and progress on stderr; prints the bin folder on stdout.
#
# kube-apiserver cannot be `go install`ed: k8s.io/kubernetes requires its staging modules at
# v0.0.0 through replace directives that only apply inside its own repository. So we write a
# small wrapper module that requires k8s.io/kubernetes and repeats each of those replaces with
# the matching published v0.Y.Z version, taken from the tag's own go.mod.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# Each pinned version can be overridden, e.g. to try a newer Kubernetes.
KUBERNETES_VERSION="${KUBETUNE_KUBERNETES_VERSION:-$KUBERNETES_VERSION}"
ETCD_VERSION="${KUBETUNE_ETCD_VERSION:-$ETCD_VERSION}"
MINIO_VERSION="${KUBETUNE_MINIO_VERSION:-$MINIO_VERSION}"
HELM_VERSION="${KUBETUNE_HELM_VERSION:-$HELM_VERSION}"
KUEUE_VERSION="${KUBETUNE_KUEUE_VERSION:-$KUEUE_VERSION}"

cache="${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}"
bin="$cache/bin"
work="$cache/build"
mkdir -p "$bin" "$work"

log() { echo "build-binaries: $*" >&2; }
die() { echo "build-binaries: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH. Install Go 1.26 or newer, or point \
KUBETUNE_KUBE_APISERVER, KUBETUNE_KUBECTL, KUBETUNE_ETCD and KUBETUNE_MINIO at binaries you already have."

go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[ "${go_minor:-0}" -ge 26 ] || die "Go $(go env GOVERSION) is too old: kube-apiserver $KUBERNETES_VERSION needs Go 1.26 or newer."

export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0

# build_if_missing NAME VERSION -- builds $bin/NAME-VERSION by running the rest of the arguments.
build_if_missing() {
  local name="$1" version="$2"; shift 2
  local out="$bin/$name-$version"
  if [ -x "$out" ]; then return 0; fi
  log "building $name $version (first run only; several minutes on 2 cores)"
  local started=$SECONDS
  if ! "$@" "$out.tmp" >"$work/$name.log" 2>&1; then
    tail -n 30 "$work/$name.log" >&2
    die "building $name $version failed; full log in $work/$name.log. Fix the cause above, or \
point KUBETUNE_$(echo "$name" | tr 'a-z-' 'A-Z_') at a binary you already have."
  fi
  mv "$out.tmp" "$out"
  log "built $name $version in $((SECONDS - started))s"
}

# kubernetes_module: writes the wrapper module for $KUBERNETES_VERSION (once) and prints its folder.
kubernetes_module() {
  local mod="$work/kubernetes-$KUBERNETES_VERSION"
  local minor="${KUBERNETES_VERSION#v1.}"
  if [ ! -f "$mod/go.mod" ]; then
    mkdir -p "$mod"
    (
      cd "$mod"
      go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
      local upstream
      upstream="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod"
      {
        echo "module kubetune.local/kubernetes-build"
        echo
        echo "go 1.26"
        echo
        echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
        echo
        echo "replace ("
        # Every `k8s.io/X => ./staging/src/k8s.io/X` in the tag's go.mod becomes
        # `k8s.io/X => k8s.io/X v0.<minor>`: the published copy of the same staging module.
        grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream" \
          | awk -v v="v0.$minor" '{ print "\t" $1 " => " $1 " " v }'
        echo ")"
      } > go.mod.tmp
      mv go.mod.tmp go.mod
      printf 'package main\n' > main.go
    )
  fi
  echo "$mod"
}

kubernetes_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"

build_kubernetes() {
  local out="$1" mod
  mod="$(kubernetes_module)"
  (
    cd "$mod"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBERNETES_VERSION"
    go build -ldflags "$kubernetes_ldflags" -o "$out" k8s.io/kubernetes/cmd/kube-apiserver
    go build -ldflags "$kubernetes_ldflags" -o "$bin/kubectl-$KUBERNETES_VERSION.tmp" k8s.io/kubernetes/cmd/kubectl
    mv "$bin/kubectl-$KUBERNETES_VERSION.tmp" "$bin/kubectl-$KUBERNETES_VERSION"
  )
}

# Kubernetes' garbage collector alone (garbage-collector/main.go), built in the same wrapper module
# as kube-apiserver: the same version, and most of its packages already compiled (about a minute
# after kube-apiserver). Its cache key also holds the source's hash, so an edit rebuilds it.
garbage_collector_key="$KUBERNETES_VERSION-$(sha256sum "$here/garbage-collector/main.go" | cut -c1-10)"
build_garbage_collector() {
  local out="$1" mod
  mod="$(kubernetes_module)"
  (
    cd "$mod"
    mkdir -p garbage-collector
    cp "$here/garbage-collector/main.go" garbage-collector/main.go
    go get "k8s.io/kubernetes/pkg/controller/garbagecollector@$KUBERNETES_VERSION"
    go build -ldflags "$kubernetes_ldflags" -o "$out" ./garbage-collector
  )
}

# build_go_main OUT NAME MODULE VERSION PACKAGE [LDFLAGS]: builds a main package of a module
# through a one-line wrapper module, whose go.sum `go get` fills in.
build_go_main() {
  local out="$1" name="$2" module="$3" version="$4" package="$5" ldflags="${6:-}"
  local mod="$work/$name-$version"
  mkdir -p "$mod"
  (
    cd "$mod"
    printf 'module kubetune.local/%s-build\n\ngo 1.26\n\nrequire %s %s\n' "$name" "$module" "$version" > go.mod
    printf 'package main\n' > main.go
    go get "$package@$version"
    go build -ldflags "-s -w $ldflags" -o "$out" "$package"
  )
}

# The Kueue manager has no replace directives, so the plain wrapper works. Its CRDs and webhook
# configurations are not written by hand: they are copied, into a folder beside the binary, from
# the same module's source in GOMODCACHE, so the manager and its manifests always match.
build_kueue() {
  local out="$1" config="$bin/kueue-$KUEUE_VERSION-config"
  (
    # A lower priority (inherited by go and the compilers) keeps a cold build, minutes of every
    # core, from starving the tests or anything else running on the machine.
    renice -n 10 -p "$BASHPID" >/dev/null
    build_go_main "$out" kueue sigs.k8s.io/kueue "$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue \
      "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  )
  local source
  source="$(cd "$work/kueue-$KUEUE_VERSION" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)/config/components"
  # crd/: bases/ and the kustomization that names which CRDs get a conversion webhook;
  # webhook/manifests.yaml: the admission webhook configurations.
  rm -rf "$config.tmp" && mkdir -p "$config.tmp/webhook"
  cp -R "$source/crd" "$config.tmp/crd"
  cp "$source/webhook/manifests.yaml" "$config.tmp/webhook/"
  chmod -R u+w "$config.tmp"
  rm -rf "$config" && mv "$config.tmp" "$config"
}

build_etcd() { build_go_main "$1" etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3; }
build_minio() { build_go_main "$1" minio github.com/minio/minio "$MINIO_VERSION" github.com/minio/minio; }
build_helm() {
  build_go_main "$1" helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

want="${*:-kube-apiserver garbage-collector etcd minio helm kueue}"
for name in $want; do
  case "$name" in
    kube-apiserver|kubectl)
      [ -x "$bin/kubectl-$KUBERNETES_VERSION" ] || rm -f "$bin/kube-apiserver-$KUBERNETES_VERSION"
      build_if_missing kube-apiserver "$KUBERNETES_VERSION" build_kubernetes ;;
    garbage-collector) build_if_missing garbage-collector "$garbage_collector_key" build_garbage_collector ;;
    etcd) build_if_missing etcd "$ETCD_VERSION" build_etcd ;;
    minio) build_if_missing minio "$MINIO_VERSION" build_minio ;;
    helm) build_if_missing helm "$HELM_VERSION" build_helm ;;
    kueue)
      # The binary counts as built only with its manifests beside it.
      [ -d "$bin/kueue-$KUEUE_VERSION-config" ] || rm -f "$bin/kueue-$KUEUE_VERSION"
      build_if_missing kueue "$KUEUE_VERSION" build_kueue ;;
    *) die "unknown binary '$name' (expected kube-apiserver, kubectl, garbage-collector, etcd, minio, helm or kueue)" ;;
  esac
done
echo "$bin"
