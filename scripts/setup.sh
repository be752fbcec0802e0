#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine (as root): the apt packages the demo and
# the tests use (the registry, busybox, the peer tools), a venv in .venv with pybuild installed
# editable plus its test extras, and the containers.conf drop-in the peers need on this kind of
# host. Safe to re-run; SKIP_APT=1 skips apt.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="python3 python3-venv python3-pip docker-registry busybox-static skopeo podman buildah umoci
  runc crun conmon uidmap iptables nftables iproute2 slirp4netns fuse-overlayfs netavark
  aardvark-dns catatonit containers-storage golang-github-containers-common curl zstd pigz git
  debootstrap hyperfine isal"

if [ "${SKIP_APT:-0}" != 1 ]; then
  missing=$(for p in $APT_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null \
            | grep -q 'install ok installed' || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "setup: apt-get install $(echo $missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

# Peers on hosts without CAP_SYS_RESOURCE and with a hybrid cgroup layout: runc as runtime
# (crun refuses hybrid cgroups) and ulimits no higher than the hard limits we have.
if [ -d /etc/containers ] && [ "$(id -u)" = 0 ]; then
  install -d /etc/containers/containers.conf.d
  nofile=$(ulimit -Hn); { [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ]; } && nofile=1048576
  nproc=$(ulimit -Hu);  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >/etc/containers/containers.conf.d/zz-pybuild-tests.conf <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
CONF
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# The Dockerfile-parser oracle for the differential fuzz test (tests/grammar/test_oracle_fuzz.py):
# PyPI's `dockerfile` 3.4.0 embeds BuildKit v0.12.5's Go parser (x86_64 wheel). Kept in its own
# venv: it is a test oracle, not a dependency. Optional: the fuzz test says why it skips.
if [ "$(uname -m)" = x86_64 ] && [ ! -x .state/oracle/bin/python ]; then
  python3 -m venv .state/oracle \
    && .state/oracle/bin/python -m pip install -q 'dockerfile==3.4.0' \
    || { echo "setup: the BuildKit parser oracle could not be installed (fuzz test will skip)" >&2
         rm -rf .state/oracle; }
fi
