"""`--change` lines: Dockerfile instructions applied to a container config."""

from __future__ import annotations

import pytest

from registry.changes import apply_changes
from registry.errors import InvalidChange
from registry.model import ContainerConfig

BASE = ContainerConfig(env=("PATH=/bin", "HOME=/root"), cmd=("sh",), working_dir="/app")

CASES = [
    (['CMD ["a", "b"]'], {"cmd": ("a", "b")}),
    (["CMD echo $HOME"], {"cmd": ("/bin/sh", "-c", "echo $HOME")}),
    (['ENTRYPOINT ["/init"]'], {"entrypoint": ("/init",), "cmd": None}),
    (['CMD ["x"]', 'ENTRYPOINT ["/init"]'], {"entrypoint": ("/init",), "cmd": ("x",)}),
    (["ENV A=1 B=$HOME/x C=${NOPE:-dflt} D=${HOME:+set}"],
     {"env": ("PATH=/bin", "HOME=/root", "A=1", "B=/root/x", "C=dflt", "D=set")}),
    (["ENV PATH=/usr/bin:$PATH"], {"env": ("PATH=/usr/bin:/bin", "HOME=/root")}),
    (["ENV LEGACY some value here"], {"env": ("PATH=/bin", "HOME=/root", "LEGACY=some value here")}),
    (["ENV Q=\"a b\" R='$HOME' S=a\\ b"], {"env": ("PATH=/bin", "HOME=/root", "Q=a b", "R=$HOME", "S=a b")}),
    (["WORKDIR sub", "WORKDIR ../other"], {"working_dir": "/app/other"}),
    (["WORKDIR $HOME"], {"working_dir": "/root"}),
    (["USER nobody:nogroup"], {"user": "nobody:nogroup"}),
    (["EXPOSE 80 443/tcp 53/udp 8000-8001"],
     {"exposed_ports": ("443/tcp", "53/udp", "80/tcp", "8000/tcp", "8001/tcp")}),
    (['LABEL a=1 "b c"="d e"'], {"labels": {"a": "1", "b c": "d e"}}),
    (['VOLUME ["/data", "/logs"]', "VOLUME /cache"], {"volumes": ("/cache", "/data", "/logs")}),
    (["STOPSIGNAL SIGTERM"], {"stop_signal": "SIGTERM"}),
    (["ONBUILD RUN make"], {"onbuild": ("RUN make",)}),
    (["cmd [\"lower\"]"], {"cmd": ("lower",)}),
]


@pytest.mark.parametrize(("changes", "want"), CASES, ids=[c[0][0][:30] for c in CASES])
def test_changes(changes: list[str], want: dict) -> None:
    got = apply_changes(BASE, changes)
    for field, value in want.items():
        assert getattr(got, field) == value, field


@pytest.mark.parametrize(("line", "why"), [
    ("RUN rm -rf /", "not supported"), ("FROM scratch", "not supported"), ("", "not supported"),
    ("ENV", "key=value"), ("ENV A", "needs a value"), ("EXPOSE 99999", "port"), ("EXPOSE 80/xyz", "protocol"),
    ("WORKDIR a b", "exactly one"), ("USER", "exactly one"), ("ENV A=\"open", "unterminated"),
    ("LABEL =x", "empty key"), ("ENV A=${B", "missing '}'"),
])
def test_bad_changes(line: str, why: str) -> None:
    with pytest.raises(InvalidChange) as info:
        apply_changes(BASE, [line])
    assert why in str(info.value) and str(info.value).startswith("invalid change")
