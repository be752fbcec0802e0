"""The offline busybox root filesystem: Debian's busybox-static binary, its applet symlinks,
passwd/group/shadow, /tmp (1777) and /root (0700), every mtime at BUSYBOX_EPOCH.

Shared by the test fixtures (tests/support/images.py builds the image from these entries)
and scripts/mk-busybox-rootfs.py (writes them as a plain tar for the demo and for
`pybuild import`). Deterministic: the same busybox-static package gives the same bytes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import BinaryIO

from registry.layertar import TarEntry, write_tar

BUSYBOX_BIN = Path("/bin/busybox")
BUSYBOX_EPOCH = 1700000000
BUSYBOX_REF = "docker.io/library/busybox:latest"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = b"""root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
wheel:x:10:root
www-data:x:33:
nogroup:x:65534:
"""
SHADOW = b"root:*::0:::::\nnobody:*::0:::::\n"


def have_busybox() -> bool:
    return BUSYBOX_BIN.is_file()


def busybox_entries(epoch: int = BUSYBOX_EPOCH) -> list[TarEntry]:
    """The busybox rootfs as layer entries (no files on disk needed)."""
    applets = subprocess.run([str(BUSYBOX_BIN), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    dirs = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
            "etc": 0o755, "root": 0o700, "tmp": 0o1777, "home": 0o755, "var": 0o755,
            "var/spool": 0o755, "var/spool/mail": 0o755, "var/www": 0o755, "proc": 0o755,
            "sys": 0o755, "dev": 0o755}
    entries = [TarEntry(d, "dir", mode=m, mtime=epoch) for d, m in dirs.items()]
    size = BUSYBOX_BIN.stat().st_size
    entries.append(TarEntry("bin/busybox", "file", mode=0o755, size=size, source=BUSYBOX_BIN,
                            mtime=epoch))
    for applet in applets:
        if applet == "bin/busybox":
            continue
        entries.append(TarEntry(applet, "symlink", mode=0o777, linkname="/bin/busybox", mtime=epoch))
    for name, data, mode in (("etc/passwd", PASSWD, 0o644), ("etc/group", GROUP, 0o644),
                             ("etc/shadow", SHADOW, 0o640)):
        entries.append(TarEntry(name, "file", mode=mode, size=len(data), data=data, mtime=epoch))
    return entries


def write_rootfs_tar(out: BinaryIO, epoch: int = BUSYBOX_EPOCH) -> None:
    """The busybox rootfs as a plain, deterministic tar stream."""
    write_tar(busybox_entries(epoch), out)
