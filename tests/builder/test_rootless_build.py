"""Rootless builds (issue 6): an unprivileged user (made here with useradd and its own
/etc/subuid + /etc/subgid range, removed afterwards) builds an image whose RUN chowns files,
whose COPY --chown names a user of the image, and whose WORKDIR is created under USER. The
layers must hold the ids the container saw (33, 1000), never the host's subordinate ids, and
private files of other users must still get into the layer; the image then runs."""

from __future__ import annotations

import gzip
import io
import json
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from registry.image import resolve_image
from registry.store import DirStore
from tests.support.images import build_busybox
from tests.support.rootless import RootlessUser as User
from tests.support.rootless import pybuild_as, rootless_user

SUBID_START = 460000

pytestmark = [pytest.mark.needs_root, pytest.mark.needs_userns, pytest.mark.slow]

DOCKERFILE = """\
FROM busybox AS files
RUN mkdir -p /d/sub && echo from-stage > /d/sub/f && chown -R 33:33 /d && chmod 700 /d/sub
FROM busybox
RUN mkdir -p /opt/app/private && echo built > /opt/app/out.txt && chown 33:33 /opt/app/out.txt \\
 && echo secret > /opt/app/private/key && chmod 600 /opt/app/private/key && chmod 700 /opt/app/private \\
 && chown -R 33:33 /opt/app/private \\
 && echo 'app:x:1000:1001::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1001:' >> /etc/group
COPY --chown=app conf.txt /etc/app/conf.txt
RUN --mount=type=bind,from=files,source=/d,target=/mnt cat /mnt/sub/f > /from-bind.txt
COPY --chown=www-data --chmod=go= conf.txt /srv/private.txt
USER app
WORKDIR /home/app/work
USER root
ENV SHOW="/from-bind.txt /opt/app/out.txt /etc/app/conf.txt /srv/private.txt /home/app/work"
CMD ["sh", "-c", "cat /opt/app/out.txt /opt/app/private/key; stat -c '%u:%g %a %n' $SHOW"]
"""


def _populate(store: DirStore, work: Path) -> None:
    build_busybox(store)
    (work / "ctx").mkdir(parents=True)
    (work / "ctx" / "Dockerfile").write_text(DOCKERFILE)
    (work / "ctx" / "conf.txt").write_text("conf\n")


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    with rootless_user(tmp_path_factory, "pbbd", subid_start=SUBID_START, populate=_populate) as u:
        yield u


def as_user(u: User, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return pybuild_as(u, *args, timeout=timeout)


def _layer_members(store: DirStore, ref: str) -> dict[str, tarfile.TarInfo]:
    """Every entry of the image's layers above the base (later layers win)."""
    image = resolve_image(store, ref)
    out: dict[str, tarfile.TarInfo] = {}
    for desc in image.manifest.layers[1:]:
        with store.open(desc.digest) as raw:
            plain = gzip.decompress(raw.read())
        with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
            for m in tf.getmembers():
                out[m.name.rstrip("/")] = m
    return out


def test_rootless_build_keeps_container_ids_and_runs(user: User) -> None:
    r = as_user(user, "build", "--progress", "plain", "-t", "rootless:1", "ctx")
    assert r.returncode == 0, r.stderr
    store = DirStore(user.store)
    members = _layer_members(store, "docker.io/library/rootless:1")

    def ids(name: str) -> tuple[int, int, int]:
        m = members[name]
        return m.uid, m.gid, m.mode & 0o7777

    assert ids("opt/app/out.txt") == (33, 33, 0o644)           # chown 33:33 in RUN
    assert ids("opt/app/private") == (33, 33, 0o700)           # private dirs of other users...
    assert ids("opt/app/private/key") == (33, 33, 0o600)       # ...and files are in the layer
    assert ids("etc/app/conf.txt")[:2] == (1000, 1001)         # COPY --chown=app: image's passwd
    assert ids("srv/private.txt") == (33, 33, 0o600)           # --chmod=go= on 0644
    assert ids("home/app/work")[:2] == (1000, 1001)            # WORKDIR under USER app
    assert ids("opt")[:2] == (0, 0)                            # container root, not the host uid
    assert not list((user.store / "tmp").iterdir())          # scratch trees of other ids removed
    every = {(m.uid, m.gid) for m in members.values()}
    assert all(u < SUBID_START and g < SUBID_START and u != user.uid for u, g in every), every
    run = as_user(user, "run", "--rm", "--network", "none", "rootless:1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "built", "secret", "0:0 644 /from-bind.txt", "33:33 644 /opt/app/out.txt",
        "1000:1001 644 /etc/app/conf.txt", "33:33 600 /srv/private.txt", "1000:1001 755 /home/app/work"]
    # a rebuild is fully cached; the build record says so
    again = as_user(user, "build", "--progress", "plain", "-t", "rootless:1", "ctx")
    assert again.returncode == 0, again.stderr
    records = sorted((user.store / "builds").glob("*.json"), key=lambda p: p.stat().st_mtime)
    last = json.loads(records[-1].read_text())
    assert {s["status"] for s in last["steps"]} <= {"CACHED", "META"}


def _context(u: User, name: str, dockerfile: str) -> Path:
    ctx = u.work / name
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "conf.txt").write_text("conf\n")
    subprocess.run(["chown", "-R", f"{u.uid}:{u.uid}", str(ctx)], check=True)
    return ctx


LINK_DOCKERFILE = """\
FROM busybox
COPY --link --chown=1000:1000 --chmod=640 conf.txt /linked/conf.txt
RUN stat -c '%u:%g %a' /linked/conf.txt > /linked.owner
CMD ["cat", "/linked.owner"]
"""


def test_rootless_copy_link_owner_is_seen_by_the_next_run(user: User) -> None:
    """COPY --link builds its layer apart; the next RUN's rootfs unpacks that blob (inside the
    user namespace, runtime.rootfs), so the RUN sees the --chown owner, not root."""
    _context(user, "linkctx", LINK_DOCKERFILE)
    r = as_user(user, "build", "--progress", "plain", "-t", "rootless-link:1", "linkctx")
    assert r.returncode == 0, r.stderr
    run = as_user(user, "run", "--rm", "--network", "none", "rootless-link:1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["1000:1000 640"]


CACHE_DOCKERFILE = """\
FROM busybox
RUN mkdir -p /d && echo x > /d/f && chown -R 33:33 /d && chmod 2770 /d
ARG N
RUN echo "$N" > /n && stat -c '%u:%g %a' /d /d/f > /owners
CMD ["sh", "-c", "cat /n /owners"]
"""


@pytest.mark.needs_registry
def test_rootless_cache_from_in_a_fresh_store_keeps_owners(user: User, registry_url: str,
                                                           tmp_path: Path) -> None:
    """A step CACHED from --cache-from in an empty store: its layer blob is fetched and unpacked
    under the next RUN, which must see the owners the first build gave (33:33, setgid)."""
    _context(user, "cachectx", CACHE_DOCKERFILE)
    cache = f"{registry_url}/rootless/cache:{secrets.token_hex(3)}"
    first = as_user(user, "build", "--progress", "plain", "--build-arg", "N=1",
                    "--cache-to", f"type=registry,ref={cache}", "cachectx")
    assert first.returncode == 0, first.stderr
    fresh = user.work.parent / "fresh-store"
    build_busybox(DirStore(fresh))
    subprocess.run(["chown", "-R", f"{user.uid}:{user.uid}", str(fresh)], check=True)
    second = as_user(replace(user, store=fresh), "build", "--progress",
                     "plain", "--build-arg", "N=2", "--cache-from", f"type=registry,ref={cache}",
                     "-t", "rootless-cache:2", "cachectx")
    assert second.returncode == 0, second.stderr
    last = json.loads(sorted((fresh / "builds").glob("*.json"), key=lambda p: p.stat().st_mtime)[-1]
                      .read_text())
    runs = [s["status"] for s in last["steps"] if str(s.get("instruction", "")).startswith("RUN")]
    assert runs == ["CACHED", "RAN"], last["steps"]
    run = as_user(replace(user, store=fresh), "run", "--rm",
                  "--network", "none", "rootless-cache:2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["2", "33:33 2770", "33:33 644"]     # /d, /d/f
