#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian/Ubuntu machine (as root): set-up (idempotent),
# then import an offline busybox base made from /bin/busybox, list it, show its history, save it
# and load it into a second store, checking that the image digest survives. Idempotent: the store
# lives under ./.state/demo (override with PYBUILD_ROOT) and SOURCE_DATE_EPOCH pins every digest.
# Later issues add steps (build, run, push, pull) below the marked line.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

export PYBUILD_ROOT="${PYBUILD_ROOT:-$PWD/.state/demo/store}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
WORK="${WORK:-$PWD/.state/demo/work}"
PYBUILD="$PWD/.venv/bin/pybuild"
mkdir -p "$WORK"

step() { printf '\n==> %s\n' "$*"; }
quote() {  # print argv the way one would type it
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s\n' "${out[*]}"
}
run() { printf '$ '; quote "$@"; "$@"; }

step "1. a root filesystem tar from /bin/busybox (busybox-static), deterministic"
run .venv/bin/python scripts/mk-busybox-rootfs.py "$WORK/busybox-rootfs.tar"
ls -l "$WORK/busybox-rootfs.tar"

step "2. import it as an image (like docker import)"
run "$PYBUILD" import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["sh"]' -m "busybox-static rootfs" \
  "$WORK/busybox-rootfs.tar" busybox:latest

step "3. list it"
run "$PYBUILD" images
run "$PYBUILD" images --digests --no-trunc busybox

step "4. its history and config"
run "$PYBUILD" history busybox
run "$PYBUILD" inspect --format '{{.Id}} {{.Os}}/{{.Architecture}} Cmd={{json .Config.Cmd}}' busybox

step "5. save it (docker-archive and oci-archive) and load it into a second store"
run "$PYBUILD" save -o "$WORK/busybox.docker.tar" busybox
run "$PYBUILD" save --format oci-archive -o "$WORK/busybox.oci.tar" busybox
rm -rf "$WORK/loaded"
run "$PYBUILD" --root "$WORK/loaded" load -i "$WORK/busybox.docker.tar"
run "$PYBUILD" --root "$WORK/loaded" images --digests

want=$("$PYBUILD" inspect --format '{{.Id}} {{.Descriptor.digest}}' busybox)
got=$("$PYBUILD" --root "$WORK/loaded" inspect --format '{{.Id}} {{.Descriptor.digest}}' busybox)
if [ "$want" != "$got" ]; then
  echo "demo: the round trip changed the image: $want -> $got" >&2
  exit 1
fi
echo "round trip kept the image ID and manifest digest: $got"

step "6. the store is a plain OCI image layout: other tools read it"
if command -v skopeo >/dev/null; then
  run skopeo inspect --format '{{.Digest}} {{.Os}}/{{.Architecture}}' \
    "oci:$PYBUILD_ROOT:docker.io/library/busybox:latest"
fi
run "$PYBUILD" system df

# --- later issues: build, run, push and pull go here -----------------------------------------
step "7. build an example (Dockerfile.examples/single-stage) and run it"
rm -rf "$WORK/app" && cp -a Dockerfile.examples/single-stage "$WORK/app"
run "$PYBUILD" build --progress plain -t demo/app:1.0 "$WORK/app"
run "$PYBUILD" run --rm demo/app:1.0

step "8. rebuild: every step is a cache hit; then change one file: its COPY and what follows re-run"
run "$PYBUILD" build --progress plain -t demo/app:1.0 "$WORK/app"
echo "delta" >> "$WORK/app/data/words.txt"
run "$PYBUILD" build --progress plain -t demo/app:1.0 "$WORK/app"
run "$PYBUILD" builds show --last
run "$PYBUILD" run --rm demo/app:1.0

step "9. push it to a local registry and pull it back into a fresh store"
if [ -z "${REG:-}" ]; then
  # our own registry on a free loopback port, stopped when the demo ends (REG=host:port to use yours)
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  REG="127.0.0.1:$port"
  rm -rf "$WORK/registry" && mkdir -p "$WORK/registry"
  REGISTRY_HTTP_ADDR="$REG" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$WORK/registry" \
    docker-registry serve testdata/registry.yml >"$WORK/registry.log" 2>&1 &
  regpid=$!
  trap 'rc=$?; kill "$regpid" 2>/dev/null || true; wait "$regpid" 2>/dev/null || true; exit $rc' EXIT
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://$REG/v2/" || { echo "demo: docker-registry did not start, see $WORK/registry.log" >&2; exit 1; }
  echo "docker-registry (Debian's CNCF distribution) serving on $REG"
fi
run "$PYBUILD" tag demo/app:1.0 "$REG/demo/app:1.0"
run "$PYBUILD" push "$REG/demo/app:1.0"
rm -rf "$WORK/pulled"
run "$PYBUILD" --root "$WORK/pulled" pull "$REG/demo/app:1.0"
run "$PYBUILD" --root "$WORK/pulled" run --rm "$REG/demo/app:1.0"
# the registry's port differs per run: drop the extra tag so reruns do not pile tags up
run "$PYBUILD" rmi "$REG/demo/app:1.0"

step "done"
