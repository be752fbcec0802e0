#!/usr/bin/env python3
"""Write the offline busybox root filesystem (from /bin/busybox, busybox-static) as a plain,
deterministic tar: the input of `pybuild import` in scripts/demo.sh.

Usage: .venv/bin/python scripts/mk-busybox-rootfs.py OUT.tar   (or - for stdout)
The recipe is tests/support/rootfs.py, the same one the test fixtures use.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.rootfs import BUSYBOX_BIN, have_busybox, write_rootfs_tar  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__.strip().splitlines()[-2] + "\n")
        return 2
    if not have_busybox():
        sys.stderr.write(f"mk-busybox-rootfs: {BUSYBOX_BIN} not found (apt-get install busybox-static)\n")
        return 1
    if argv[0] == "-":
        write_rootfs_tar(sys.stdout.buffer)
        return 0
    out = Path(argv[0])
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        write_rootfs_tar(f)
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
