#!/usr/bin/env bash
# Make this machine able to build and run sparq-stream's images with Podman, with no image registry:
#   1. install podman (+ runc, buildah, mmdebstrap) from Debian's packages when missing (needs root and apt);
#   2. apply the two containers.conf settings these machines need (a nofile/nproc ulimit the
#      runtime can set, and runc as the OCI runtime);
#   3. build the Debian base image with mmdebstrap from Debian's mirror and import it as
#      localhost/sparq-base:bookworm (python3 + venv, and openjdk-17-jre-headless for the broker image).
# Idempotent: every step is skipped when already done. Prints the base image's name on success.
#
#   deploy/containers/setup-podman.sh            all three steps
#   SPARQ_DEBIAN_MIRROR=http://... setup-podman.sh
# Exit codes: 0 ok; 3 no container engine can be made to run here (the message says why).
set -euo pipefail

BASE="${SPARQ_BASE_IMAGE:-localhost/sparq-base:bookworm}"
MIRROR="${SPARQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${SPARQ_DEBIAN_SUITE:-bookworm}"
CONF=/etc/containers/containers.conf

say() { echo "setup-podman: $*" >&2; }
cannot() { say "$*"; exit 3; }

# 1. packages
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || cannot "missing ${need[*]} and not root: install them with apt-get"
  command -v apt-get >/dev/null 2>&1 || cannot "missing ${need[*]} and no apt-get"
  say "installing ${need[*]} (Debian packages)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "${need[@]}" netavark aardvark-dns fuse-overlayfs slirp4netns >/dev/null) \
    || cannot "apt-get install ${need[*]} failed"
fi

# 2. containers.conf: default_ulimits (the host's nofile hard limit is below podman's default) and runc
if [ "$(id -u)" = 0 ]; then
  mkdir -p /etc/containers
  touch "$CONF"
  if ! grep -q '^default_ulimits' "$CONF"; then
    if grep -q '^\[containers\]' "$CONF"; then
      sed -i '/^\[containers\]/a default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' "$CONF"
    else
      printf '\n[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n' >>"$CONF"
    fi
  fi
  if ! grep -q '^runtime *=' "$CONF"; then
    if grep -q '^\[engine\]' "$CONF"; then
      sed -i '/^\[engine\]/a runtime = "runc"' "$CONF"
    else
      printf '\n[engine]\nruntime = "runc"\n' >>"$CONF"
    fi
  fi
fi

# a container must actually start (a kernel or sandbox may forbid namespaces)
podman info >/dev/null 2>&1 || cannot "podman info fails: $(podman info 2>&1 | tail -1)"

# 3. the base image, from Debian's mirror (no registry is needed)
if ! podman image exists "$BASE"; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  say "building $BASE with mmdebstrap from $MIRROR ($SUITE)"
  mmdebstrap --quiet --variant=apt --mode="$( [ "$(id -u)" = 0 ] && echo root || echo unshare )" \
    --include=ca-certificates,python3,python3-venv,openjdk-17-jre-headless,procps \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$tmp/base.tar" "$MIRROR" \
    || cannot "mmdebstrap failed (is $MIRROR reachable?)"
  podman import --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$BASE" >/dev/null
fi
podman run --rm "$BASE" true || cannot "a container of $BASE does not start: $(podman run --rm "$BASE" true 2>&1 | tail -1)"
echo "$BASE"
