"""Digest value type, verifying reader, the OCI/Docker model and canonical JSON."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from registry import mediatypes as mt
from registry.digest import Digest, VerifyingReader, is_digest
from registry.errors import DigestMismatch, InvalidDigest, InvalidManifest, SizeMismatch
from registry.model import (
    ContainerConfig,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
    chain_ids,
    sniff_media_type,
)

D1 = Digest.of(b"one")
D2 = Digest.of(b"two")


@pytest.mark.parametrize("text", ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha512:" + "a" * 64,
                                  "a" * 64, "sha256:" + "g" * 64, ""])
def test_bad_digests(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)
    assert not is_digest(text)


def test_digest_round_trip_and_short() -> None:
    d = Digest.of(b"hello")
    assert Digest.parse(str(d)) == d
    assert d.hex == hashlib.sha256(b"hello").hexdigest()
    assert d.short == d.hex[:12]


def test_verifying_reader() -> None:
    data = b"x" * 5000
    ok = VerifyingReader(io.BytesIO(data), Digest.of(data), len(data))
    assert ok.read() == data
    bad = VerifyingReader(io.BytesIO(data), Digest.of(b"other"), len(data))
    with pytest.raises(DigestMismatch):
        bad.verify_rest()
    short = VerifyingReader(io.BytesIO(data), Digest.of(data), len(data) + 1)
    with pytest.raises(SizeMismatch):
        short.verify_rest()
    long = VerifyingReader(io.BytesIO(data), Digest.of(data), 10)
    with pytest.raises(SizeMismatch):
        long.read(100)


def _manifest_doc() -> dict:
    return {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": str(D1), "size": 3},
            "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": str(D2), "size": 3,
                        "annotations": {"a": "b"}}],
            "annotations": {"x": "y"}}


def test_manifest_round_trip_is_canonical() -> None:
    raw = canonical_json(_manifest_doc())
    m = Manifest.from_json(raw)
    assert m.config.digest == D1 and m.layers[0].annotations == {"a": "b"}
    assert m.to_json() == raw
    assert sniff_media_type(raw) == mt.OCI_MANIFEST


def test_manifest_refuses_ambiguous_and_schema1() -> None:
    doc = _manifest_doc()
    doc["manifests"] = []
    with pytest.raises(InvalidManifest, match="both"):
        Manifest.from_json(json.dumps(doc).encode())
    with pytest.raises(InvalidManifest, match="schema 1"):
        Manifest.from_json(json.dumps({"schemaVersion": 1, "name": "x"}).encode())
    with pytest.raises(InvalidManifest, match="not JSON"):
        Manifest.from_json(b"{nope")
    bad = _manifest_doc()
    bad["layers"][0]["size"] = -1
    with pytest.raises(InvalidManifest, match="size"):
        Manifest.from_json(json.dumps(bad).encode())


def test_index_and_platform() -> None:
    raw = canonical_json({"schemaVersion": 2, "mediaType": mt.DOCKER_LIST, "manifests": [
        {"mediaType": mt.DOCKER_MANIFEST, "digest": str(D1), "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]})
    idx = Index.from_json(raw)
    assert idx.manifests[0].platform == Platform("linux", "arm64", "v8")
    assert idx.to_json() == raw
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    with pytest.raises(ValueError):
        Platform.parse("linux")


def test_image_config_keeps_unknown_fields() -> None:
    doc = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Env": ["A=1"], "Cmd": ["sh"], "Hostname": "h"},
           "rootfs": {"type": "layers", "diff_ids": [str(D1)]},
           "history": [{"created_by": "x", "empty_layer": True}], "docker_version": "24"}
    cfg = ImageConfig.from_json(json.dumps(doc).encode())
    assert cfg.config.cmd == ("sh",) and cfg.config.extra == {"Hostname": "h"}
    assert cfg.history[0].empty_layer
    again = json.loads(cfg.to_json())
    assert again["docker_version"] == "24" and again["config"]["Hostname"] == "h"
    assert ContainerConfig(env=("A=1", "B=x=y")).env_dict() == {"A": "1", "B": "x=y"}


def test_chain_ids_follow_the_spec() -> None:
    ids = chain_ids([D1, D2])
    assert ids[0] == D1
    assert ids[1].hex == hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_descriptor_round_trip() -> None:
    d = Descriptor(mt.OCI_MANIFEST, D1, 10, {"k": "v"}, Platform("linux", "amd64"))
    assert Descriptor.from_dict(d.to_dict()) == d
