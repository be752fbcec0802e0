"""The offline busybox base image: deterministic, readable by skopeo, pushable to a registry."""

from __future__ import annotations

import json
import subprocess

import pytest

from registry.model import ImageConfig, Manifest
from registry.store import DirStore
from tests.support.images import BUSYBOX_REF, build_busybox


def test_busybox_digest_is_fixed(tmp_path, busybox_image) -> None:
    again = build_busybox(DirStore(tmp_path / "other"))
    assert again.digest == busybox_image.desc.digest


def test_busybox_manifest_and_config(busybox_image) -> None:
    store = busybox_image.store
    manifest = Manifest.from_json(store.read(busybox_image.desc.digest))
    config = ImageConfig.from_json(store.read(manifest.config.digest))
    assert len(manifest.layers) == 1 and len(config.diff_ids) == 1
    assert config.config.cmd == ("sh",)


@pytest.mark.needs_peer("skopeo")
def test_skopeo_reads_store(busybox_image) -> None:
    out = subprocess.run(["skopeo", "inspect", f"oci:{busybox_image.store.root}:{BUSYBOX_REF}"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["Digest"] == str(busybox_image.desc.digest)
    assert info["Architecture"] and info["Os"] == "linux"


@pytest.mark.needs_registry
@pytest.mark.needs_peer("skopeo")
def test_busybox_pushed_keeps_digest(busybox_in_registry, busybox_image) -> None:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{busybox_in_registry}"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["Digest"] == str(busybox_image.desc.digest)
