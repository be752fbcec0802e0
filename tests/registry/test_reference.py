"""References are parsed and normalised exactly like docker's distribution/reference."""

from __future__ import annotations

import pytest

from registry.digest import Digest
from registry.errors import InvalidReference
from registry.reference import parse_reference

HEX = "a" * 64

NORMALIZED = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("me/app", "docker.io/me/app:latest", "me/app:latest"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/app:1", "localhost:5000/app:1", "localhost:5000/app:1"),
    ("127.0.0.1:5000/a/b/c:t_1.2-x", "127.0.0.1:5000/a/b/c:t_1.2-x", "127.0.0.1:5000/a/b/c:t_1.2-x"),
    ("Example.com/app", "Example.com/app:latest", "Example.com/app:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app:latest"),
    ("ghcr.io/o/r@sha256:" + HEX, "ghcr.io/o/r@sha256:" + HEX, "ghcr.io/o/r@sha256:" + HEX),
    ("busybox:1@sha256:" + HEX, "docker.io/library/busybox:1@sha256:" + HEX, "busybox:1@sha256:" + HEX),
    ("a__b/c.d/e-f--g", "docker.io/a__b/c.d/e-f--g:latest", "a__b/c.d/e-f--g:latest"),
]


@pytest.mark.parametrize(("text", "full", "familiar"), NORMALIZED, ids=[c[0][:40] for c in NORMALIZED])
def test_normalization(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar() == familiar
    assert str(parse_reference(full)) == full  # idempotent


def test_digest_reference_has_no_default_tag() -> None:
    ref = parse_reference("busybox@sha256:" + HEX)
    assert ref.tag is None and ref.digest == Digest("sha256", HEX)
    assert ref.object == "sha256:" + HEX
    assert parse_reference("busybox", default_tag=False).tag is None


INVALID = [
    ("", "empty"),
    ("UPPER", "lowercase"),
    ("Busybox:1", "lowercase"),
    ("busybox:", "tag"),
    ("busybox:-x", "tag"),
    ("busybox:" + "x" * 129, "tag"),
    ("busybox@sha256:abc", "digest"),
    ("busybox@md5:" + HEX, "digest"),
    (HEX, "64-byte hexadecimal"),
    ("a//b", "format"),
    ("-a", "format"),
    ("a/", "format"),
    ("a:b:c", "format"),
    ("x/" + "a" * 260, "255"),
    ("exa mple", "format"),
]


@pytest.mark.parametrize(("text", "why"), INVALID, ids=[c[0][:20] or "empty" for c in INVALID])
def test_invalid_references_are_clear_errors(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith("invalid reference")
    assert why in message


def test_with_tag_and_familiar_name() -> None:
    ref = parse_reference("localhost:5000/x@sha256:" + HEX).with_tag("v2")
    assert str(ref) == "localhost:5000/x:v2"
    assert parse_reference("busybox").familiar_name() == "busybox"
    with pytest.raises(InvalidReference):
        parse_reference("busybox").with_tag("bad tag")
