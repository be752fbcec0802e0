"""COPY/ADD/WORKDIR details that run inside the sandbox (issue 6): --chmod symbolic modes for
context files, directories and other stages; --chown and WORKDIR-under-USER names resolved in
the mounted image (whiteouts honoured); globs, --parents and --exclude from other stages;
--link layers reused across base images; cache mounts seeded from a stage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.records import BuildRecord
from tests.builder.helpers import build, must_build, statuses, write_tree
from tests.support.images import StoredImage

pytestmark = [pytest.mark.needs_root]


def mode(p: Path) -> int:
    return p.lstat().st_mode & 0o7777


def owner(p: Path) -> tuple[int, int]:
    st = p.lstat()
    return st.st_uid, st.st_gid


CHMOD = """\
FROM busybox AS other
RUN mkdir -p /src/sub && echo x > /src/exe && chmod 0750 /src/exe && echo y > /src/sub/data \\
 && chmod 0640 /src/sub/data && chmod 0700 /src/sub
FROM busybox
COPY --chmod=u=rwX,go=rX tree/ /ctx/
COPY --chmod=a+X,g-w plain.txt /ctxfile
COPY --from=other --chmod=go=u-w /src/ /stage/
COPY --from=other --chmod=0604 /src/exe /octal
COPY --chmod=o+w <<EOF /inline.txt
inline
EOF
"""


def test_symbolic_chmod_for_every_source_kind(busybox_store: StoredImage, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": CHMOD, "tree/run.sh": "#!/bin/sh\n",
                                        "tree/lib/util.txt": "u\n", "plain.txt": "p\n"})
    (ctx / "tree" / "run.sh").chmod(0o700)
    (ctx / "tree" / "lib" / "util.txt").chmod(0o600)
    (ctx / "tree" / "lib").chmod(0o700)
    (ctx / "plain.txt").chmod(0o664)
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "-o", f"type=local,dest={out}")
    # u=rwX,go=rX: directories and executables 0755, other files 0644 (chmod(1) per file)
    assert mode(out / "ctx/run.sh") == 0o755
    assert mode(out / "ctx/lib") == 0o755
    assert mode(out / "ctx/lib/util.txt") == 0o644
    assert mode(out / "ctxfile") == 0o644                  # 0664: a+X adds nothing, g-w
    # from another stage: go=u-w per entry (0750 -> 0755, dir 0700 -> 0755, 0640 -> 0644)
    assert mode(out / "stage/exe") == 0o755
    assert mode(out / "stage/sub") == 0o755
    assert mode(out / "stage/sub/data") == 0o644
    assert mode(out / "octal") == 0o604
    assert mode(out / "inline.txt") == 0o646               # heredocs start at 0644


def test_invalid_chmod_is_a_located_error(busybox_store: StoredImage, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY --chmod=u+q a /a\n", "a": ""})
    res = build(busybox_store.store.root, ctx)
    assert res.code == 1
    assert "Dockerfile:2:" in res.stderr and "invalid mode 'u+q'" in res.stderr


CHOWN = """\
FROM busybox
RUN echo 'app:x:1000:2000::/home/app:/bin/sh' >> /etc/passwd \\
 && echo 'appgrp:x:2000:' >> /etc/group && echo 'staff:x:50:' >> /etc/group
COPY --chown=app a.txt /by-name
COPY --chown=app:staff a.txt /by-name-group
COPY --chown=1234 a.txt /by-uid
COPY --chown=root:staff a.txt /root-staff
USER app
WORKDIR /srv/app/data
USER 4321
WORKDIR /srv/num
USER ghost
WORKDIR /srv/ghost
"""


def test_chown_and_workdir_names_resolve_in_the_image(busybox_store: StoredImage, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": CHOWN, "a.txt": "a\n"})
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "-o", f"type=local,dest={out}")
    assert owner(out / "by-name") == (1000, 2000)           # a name: its primary group
    assert owner(out / "by-name-group") == (1000, 50)
    assert owner(out / "by-uid") == (1234, 1234)            # a bare uid: gid = uid
    assert owner(out / "root-staff") == (0, 50)
    # WORKDIR under USER: the directories it creates belong to that user (existing /srv does
    # not exist in busybox: created too, as mkdir -p under BuildKit)
    for d in ("srv/app", "srv/app/data"):
        assert owner(out / d) == (1000, 2000), d
    assert owner(out / "srv/num") == (4321, 4321)
    assert owner(out / "srv/ghost") == (0, 0)               # unknown user: root, as BuildKit


def test_chown_names_honour_whiteouts_and_symlinks(busybox_store: StoredImage, tmp_path: Path) -> None:
    """Names are read from the merged rootfs: a group file deleted by an earlier step is gone
    (its whiteout hides the base layer's copy), and a symlinked /etc/passwd is followed
    inside the image."""
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox\n"
        "RUN mkdir /data && echo 'svc:x:77:78::/:/bin/sh' > /data/passwd && rm /etc/passwd "
        "&& ln -s /data/passwd /etc/passwd\n"
        "COPY --chown=svc a.txt /svc.txt\n"), "a.txt": "a\n"})
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "-o", f"type=local,dest={out}")
    assert owner(out / "svc.txt") == (77, 78)
    gone = write_tree(tmp_path / "gone", {"Dockerfile": (
        "FROM busybox\nRUN rm /etc/group\nCOPY --chown=root:www-data a.txt /x\n"), "a.txt": "a\n"})
    res = build(busybox_store.store.root, gone)
    assert res.code == 1
    assert "Dockerfile:3: COPY: unable to find group www-data" in res.stderr
    assert "hint:" in res.stderr


FROM_GLOBS = """\
FROM busybox AS build
RUN mkdir -p /out/sub /out/deep/er && echo a > /out/a.txt && echo b > /out/b.txt \\
 && echo c > /out/c.log && echo d > /out/sub/d.txt && echo e > /out/deep/er/e.txt \\
 && ln -s sub /out/link && chown 33:33 /out/b.txt
FROM busybox
COPY --from=build /out/*.txt /globbed/
COPY --from=build /out/*/d.txt /one-level/
COPY --from=build /out/**/*.txt /stars/
COPY --from=build /out/s?b /qmark/
COPY --parents --from=build /out/./*/d.txt /kept/
COPY --parents --from=build /out/sub/d.txt /full/
COPY --from=build --exclude=*.log --exclude=sub /out/ /excluded/
"""


def test_copy_from_stage_globs_parents_exclude(busybox_store: StoredImage, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": FROM_GLOBS})
    out = tmp_path / "out"
    must_build(busybox_store.store.root, ctx, "-o", f"type=local,dest={out}")

    def names(d: str) -> list[str]:
        return sorted(str(p.relative_to(out / d)) for p in (out / d).rglob("*"))

    assert names("globbed") == ["a.txt", "b.txt"]
    assert owner(out / "globbed/b.txt") == (33, 33)        # --from keeps owners
    assert names("one-level") == ["d.txt"]                  # link -> sub is not walked into
    assert names("stars") == ["d.txt"]      # '**' is '*': one component (no a.txt, no deep/er/e.txt)
    assert names("qmark") == ["d.txt"]                      # a matched directory: its contents
    assert names("kept") == ["sub", "sub/d.txt"]
    assert names("full") == ["out", "out/sub", "out/sub/d.txt"]
    assert names("excluded") == ["a.txt", "b.txt", "deep", "deep/er", "deep/er/e.txt", "link"]


def test_copy_from_stage_glob_without_match_names_the_pattern(busybox_store: StoredImage,
                                                              tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": (
        "FROM busybox AS build\nRUN mkdir /out\nFROM busybox\nCOPY --from=build /out/*.bin /dst/\n")})
    res = build(busybox_store.store.root, ctx)
    assert res.code == 1
    assert "Dockerfile:4: COPY --from=build: source '/out/*.bin' matched no files" in res.stderr
    several = write_tree(tmp_path / "several", {"Dockerfile": (
        "FROM busybox AS build\nRUN mkdir /out && touch /out/a /out/b\nFROM busybox\n"
        "COPY --from=build /out/* /dst\n")})
    res = build(busybox_store.store.root, several)
    assert res.code == 1 and "must be a directory and end with '/'" in res.stderr


LINK = """\
ARG BASE=busybox
FROM $BASE
COPY --link --chown=1000:1000 a.txt /linked/
RUN cat /linked/a.txt > /after.txt && ls /base-marker 2>/dev/null >> /after.txt; true
"""


def _step(rec: BuildRecord, prefix: str) -> tuple[str, str | None]:
    s = next(s for s in rec.steps if s.instruction.startswith(prefix))
    return s.status, s.layer


def test_link_layer_is_reused_across_base_images(busybox_store: StoredImage, tmp_path: Path) -> None:
    root = busybox_store.store.root
    base2 = write_tree(tmp_path / "base2", {"Dockerfile": "FROM busybox\nRUN echo 2 > /base-marker\n"})
    must_build(root, base2, "-t", "base2:1")
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": LINK, "a.txt": "linked\n"})
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    _, rec1 = must_build(root, ctx, "-o", f"type=local,dest={out1}")
    status1, layer1 = _step(rec1, "COPY --link")
    assert status1 == "RAN" and layer1
    _, rec2 = must_build(root, ctx, "--build-arg", "BASE=base2:1", "-o", f"type=local,dest={out2}")
    status2, layer2 = _step(rec2, "COPY --link")
    assert (status2, layer2) == ("CACHED", layer1)          # independent of the base
    assert _step(rec2, "RUN")[0] == "RAN"                   # ...but what follows is not
    assert (out2 / "after.txt").read_text() == "linked\n/base-marker\n"
    assert (out1 / "after.txt").read_text() == "linked\n"
    assert owner(out2 / "linked/a.txt") == (1000, 1000)
    _, rec3 = must_build(root, ctx, "--build-arg", "BASE=base2:1")
    assert [st for st, _ in statuses(rec3)] == ["CACHED", "CACHED"]


def test_link_with_a_chown_name_is_refused(busybox_store: StoredImage, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY --link --chown=www-data a /a\n",
                                        "a": ""})
    res = build(busybox_store.store.root, ctx)
    assert res.code == 1
    assert "Dockerfile:2:" in res.stderr and "cannot be resolved in a --link copy" in res.stderr


CACHE_FROM = """\
FROM busybox AS seed
RUN mkdir -p /seed/dir && echo seeded > /seed/dir/s.txt && chown -R 33:33 /seed/dir
FROM busybox
RUN --mount=type=cache,target=/c,from=seed,source=/seed/dir \\
    cat /c/s.txt > /seen.txt && stat -c %u /c/s.txt >> /seen.txt \\
    && echo run >> /c/log && wc -l < /c/log >> /seen.txt
"""


def test_cache_mount_seeded_from_a_stage(busybox_store: StoredImage, tmp_path: Path) -> None:
    root = busybox_store.store.root
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": CACHE_FROM})
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    must_build(root, ctx, "-o", f"type=local,dest={out1}")
    assert (out1 / "seen.txt").read_text().split() == ["seeded", "33", "1"]
    assert not (out1 / "c").exists()
    must_build(root, ctx, "--no-cache", "-o", f"type=local,dest={out2}")
    assert (out2 / "seen.txt").read_text().split() == ["seeded", "33", "2"]   # the cache persists
    # another seed content is another cache
    (ctx / "Dockerfile").write_text(CACHE_FROM.replace("echo seeded", "echo other"))
    out3 = tmp_path / "o3"
    must_build(root, ctx, "-o", f"type=local,dest={out3}")
    assert (out3 / "seen.txt").read_text().split() == ["other", "33", "1"]
    assert not os.path.exists(out3 / "seed")
