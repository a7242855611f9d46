#!/usr/bin/env bash
# Print the path of kustomize KUSTOMIZE_VERSION (default v5.7.1), installing it when missing with
# `go install` from the Go module proxy (no download site needed) into a cache folder:
#   ${SPARQ_TOOLS_DIR:-~/.cache/sparq-tools}/kustomize-VERSION/kustomize
# Exit codes: 0 ok (the path on stdout); 3 no Go toolchain to build it with.
#   kustomize="$(deploy/k8s/install-kustomize.sh)" && "$kustomize" build deploy/k8s
set -euo pipefail
VERSION="${KUSTOMIZE_VERSION:-v5.7.1}"
DIR="${SPARQ_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sparq-tools}/kustomize-$VERSION"
if [[ -x "$DIR/kustomize" ]]; then echo "$DIR/kustomize"; exit 0; fi
command -v go >/dev/null 2>&1 || { echo "install-kustomize: no go toolchain to build kustomize $VERSION" >&2; exit 3; }
mkdir -p "$DIR"
echo "install-kustomize: go install sigs.k8s.io/kustomize/kustomize/v5@$VERSION" >&2
GOBIN="$DIR" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$VERSION" >&2
echo "$DIR/kustomize"
