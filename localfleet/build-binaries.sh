#!/usr/bin/env bash
# Builds one local-fleet binary set from the Go module proxy into a version-keyed directory.
#   build-binaries.sh COMPONENT VERSION OUTDIR
# COMPONENT: kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) | etcd | kwok | helm |
#            prometheus | traefik | gateway-api (the standard CRDs, from the module's config/crd/standard) |
#            argo-rollouts (rollouts-controller and its CRDs: the `make bench` anchor, built only by `make bench`)
# The caller (localfleet/binaries.py) decides what is missing and runs builds one at a time (2 cores).
# Output lands in OUTDIR.tmp and is renamed to OUTDIR only when complete, so a cut-off build is never taken for done.
set -euo pipefail

component=$1 version=$2 outdir=$3
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
work=$(mktemp -d "${TMPDIR:-/tmp}/qfleet-build-$component.XXXXXX")
trap 'rm -rf "$work"' EXIT
tmp_out="$outdir.tmp"
rm -rf "$tmp_out" && mkdir -p "$tmp_out"
cd "$work"

build_kubernetes() {
  local kv="v$version" sv="v0.${version#1.}" minor=${version#1.}
  minor=${minor%%.*}
  go mod init qfleet.local/k8sbins >/dev/null 2>&1
  # Read k8s's own go.mod first: its staging modules are required at v0.0.0 and replaced by local paths, which only
  # work inside k8s's own tree. The wrapper replaces each with the published staging tag instead.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$kv" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  go mod edit -go=1.24.0 -require="k8s.io/kubernetes@$kv"
  printf '\ngodebug default=go1.24\n' >>go.mod
  local m
  for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' "$gomod"); do
    go mod edit -replace="$m=$m@$sv"
  done
  cat >tools.go <<'EOF'
//go:build tools
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
EOF
  go mod tidy
  local now ldf="-s -w" p
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=$now"
  done
  go build -trimpath -tags providerless -ldflags "$ldf" -o "$tmp_out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  # server/go.mod replaces its sibling modules by relative paths, so `go install` of it cannot work: wrap it.
  go mod init qfleet.local/etcdbin >/dev/null 2>&1
  printf '//go:build tools\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n' >tools.go
  go get "go.etcd.io/etcd/server/v3@v$version"
  go mod tidy
  go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$version" \
    -o "$tmp_out/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  GOBIN="$tmp_out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$version"
}

build_helm() {
  local minor=${K8S_MINOR:-34} ldf="-s -w"
  ldf+=" -X helm.sh/helm/v3/internal/version.version=v$version"
  ldf+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  ldf+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  GOBIN="$tmp_out" go install -trimpath -ldflags "$ldf" "helm.sh/helm/v3/cmd/helm@v$version"
}

build_prometheus() {
  # Prometheus 3.x is published as module versions v0.3xx.y (3.16.0 -> v0.316.0).
  local major=${version%%.*} rest=${version#*.}
  local minor=${rest%%.*} patch=${rest#*.}
  local modver="v0.$((major * 100 + minor)).$patch" p=github.com/prometheus/common/version
  local ldf="-s -w -X $p.Version=$version -X $p.Revision=module-$modver -X $p.Branch=release"
  ldf+=" -X $p.BuildUser=qfleet -X $p.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
  GOBIN="$tmp_out" go install -trimpath -ldflags "$ldf" "github.com/prometheus/prometheus/cmd/prometheus@$modver"
}

build_traefik() {
  # 3.6.x builds from the proxy through a wrapper that repeats traefik's own replace directives (3.7.x does not).
  go mod init qfleet.local/traefikbin >/dev/null 2>&1
  go mod edit -go=1.25.0 -require="github.com/traefik/traefik/v3@v$version" \
    -replace=github.com/abbot/go-http-auth=github.com/containous/go-http-auth@v0.4.1-0.20200324110947-a37a7636d23e \
    -replace=github.com/gorilla/mux=github.com/containous/mux@v0.0.0-20250523120546-41b6ec3aed59 \
    -replace=github.com/mailgun/minheap=github.com/containous/minheap@v0.0.0-20190809180810-6e71eb837595 \
    -exclude=github.com/tencentcloud/tencentcloud-sdk-go@v3.0.83+incompatible
  printf '//go:build tools\npackage tools\n\nimport _ "github.com/traefik/traefik/v3/cmd/traefik"\n' >tools.go
  go mod tidy
  go build -trimpath -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=v$version" \
    -o "$tmp_out/traefik" github.com/traefik/traefik/v3/cmd/traefik
}

build_gateway-api() {
  local dir
  dir=$(go mod download -json "sigs.k8s.io/gateway-api@v$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp "$dir"/config/crd/standard/*.yaml "$tmp_out/"
  chmod u+w "$tmp_out"/*.yaml
}

build_argo-rollouts() {
  # The controller's module pins k8s.io/* with `replace` directives that `go install` ignores: a wrapper module
  # requires it and repeats its replace block verbatim (v1.10.2 needs a newer Go than the machine's).
  local gomod dir
  go mod init qfleet.local/argorolloutsbin >/dev/null 2>&1
  gomod=$(go mod download -json "github.com/argoproj/argo-rollouts@v$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  dir=$(go mod download -json "github.com/argoproj/argo-rollouts@v$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  go mod edit -go="$(sed -n 's/^go //p' "$gomod")" -require="github.com/argoproj/argo-rollouts@v$version"
  sed -n '/^replace (/,/^)/p' "$gomod" >>go.mod
  printf '//go:build tools\npackage tools\n\nimport _ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"\n' >tools.go
  go mod tidy
  go build -trimpath -ldflags "-s -w -X github.com/argoproj/argo-rollouts/utils/version.version=v$version" \
    -o "$tmp_out/rollouts-controller" github.com/argoproj/argo-rollouts/cmd/rollouts-controller
  cp "$dir"/manifests/crds/*-crd.yaml "$dir"/manifests/role/argo-rollouts-clusterrole.yaml "$tmp_out/"
  chmod u+w "$tmp_out"/*.yaml
}

start=$(date +%s)
"build_$component"
rm -rf "$outdir"
mv "$tmp_out" "$outdir"
echo "built $component $version into $outdir in $(($(date +%s) - start)) s"
