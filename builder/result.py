"""The outcome of a build: image ID, manifest descriptor, the build record, what was pushed;
and the ``--metadata-file`` document. Stdlib + registry.model + builder.records only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.records import BuildRecord
from registry.model import Descriptor, ImageConfig


@dataclass
class BuildResult:
    image_id: str                      # config digest (docker's image ID)
    manifest: Descriptor
    record: BuildRecord
    tags: tuple[str, ...] = ()
    config: ImageConfig | None = None
    pushed: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The --metadata-file document (buildx's keys plus pybuild's per-step details)."""
        return {
            "containerimage.digest": str(self.manifest.digest),
            "containerimage.config.digest": self.image_id,
            "containerimage.descriptor": self.manifest.to_dict(),
            "image.name": ",".join(self.tags),
            "pybuild.build.id": self.record.id,
            "pybuild.steps": [
                {"index": s.index, "stage": s.stage, "instruction": s.instruction,
                 "status": s.status, "key": s.key, "duration": round(s.duration, 4),
                 "layer": s.layer, "layer_size": s.layer_size, "reasons": s.reasons}
                for s in self.record.steps],
            "pybuild.pushed": self.pushed,
        }
