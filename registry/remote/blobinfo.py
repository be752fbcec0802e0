"""Where blobs are known to exist remotely, digest -> [(host, repository)] (skopeo's blob-info cache),
so a push can cross-repo mount instead of uploading. ``<store>/remote/blob-locations.json`` is a hint
(a stale entry costs one failed mount), bounded, updated read-modify-write under an flock and
replaced atomically without fsyncs (a lost hint costs one upload). Imports registry.digest/store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path

from registry.digest import Digest
from registry.store import DirStore, atomic_write, flocked

MAX_DIGESTS = 20000
MAX_LOCATIONS = 8


class BlobInfoCache:
    def __init__(self, store: DirStore | None) -> None:
        self.path: Path | None = store.subdir("remote") / "blob-locations.json" if store is not None else None
        self._pending: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._data: dict[str, list[list[str]]] | None = None

    def _load(self) -> dict[str, list[list[str]]]:
        if self.path is None:
            return {}
        try:
            doc = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError, OSError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def candidates(self, digest: Digest, host: str) -> list[str]:
        """Repositories on ``host`` that had ``digest``, most recent first."""
        with self._lock:
            if self._data is None:
                self._data = self._load()
            locs = list(self._data.get(str(digest), ())) + [
                list(x) for x in self._pending.get(str(digest), ())
            ]
        out = []
        for loc in reversed(locs):
            if len(loc) == 2 and loc[0] == host and loc[1] not in out:
                out.append(loc[1])
        return out

    def record(self, digests: Iterable[Digest], host: str, repository: str) -> None:
        with self._lock:
            for d in digests:
                self._pending.setdefault(str(d), []).append((host, repository))

    def flush(self) -> None:
        """Write what was recorded (best effort: the cache is an optimisation)."""
        if self.path is None:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with flocked(self.path.with_name("blob-locations.lock")):
                data = self._load()
                for digest, locs in pending.items():
                    cur = [x for x in data.get(digest, []) if isinstance(x, list)]
                    for host, repo in locs:
                        cur = [x for x in cur if x != [host, repo]] + [[host, repo]]
                    data[digest] = cur[-MAX_LOCATIONS:]
                    data[digest] = data.pop(digest)  # most recently used last
                if len(data) > MAX_DIGESTS:
                    for key in list(data)[: len(data) - MAX_DIGESTS]:
                        del data[key]
                atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode(), mode=0o666,
                             durable=False)
                with self._lock:
                    self._data = data
        except OSError:
            pass


