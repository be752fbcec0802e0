"""Registries configuration: insecure hosts, per-host CAs, mirrors. One TOML file in a subset of
containers' registries.conf v2 syntax ($PYBUILD_REGISTRIES_CONF, else the user's, else
/etc/pybuild/registries.toml); CAs in docker's certs.d layout (<dir>/<host[:port]>/*.crt, client
cert/key), searched in the listed directories below. CLI flags override the file. Imports registry."""

# The user's file is $XDG_CONFIG_HOME/pybuild/registries.toml (~/.config/...). certs.d directories, in
# order: the file's certs_d list, $PYBUILD_CERTS_D, ~/.config/pybuild/certs.d, /etc/pybuild/certs.d,
# /etc/containers/certs.d, /etc/docker/certs.d.

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from registry.reference import DEFAULT_DOMAIN, Reference
from registry.remote.errors import RemoteError

DOCKER_HUB_API = "registry-1.docker.io"


class ConfigError(RemoteError):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(
            f"registries config {path}: {why}", hint="see the README section 'Registries configuration'"
        )


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def api_host(domain: str) -> str:
    """The host that serves the API for a reference domain (docker.io is special)."""
    return DOCKER_HUB_API if domain in (DEFAULT_DOMAIN, "index.docker.io") else domain


@dataclass(frozen=True, slots=True)
class Mirror:
    """One mirror of a registry (tried in order before the origin)."""

    location: str  # host[:port][/path-prefix]
    insecure: bool = False

    @property
    def host(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def prefix(self) -> str:
        _, _, rest = self.location.partition("/")
        return rest.strip("/")


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One [[registry]] block of the configuration."""

    location: str  # host[:port][/namespace] this block applies to
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    ca: tuple[str, ...] = ()  # extra CA files for this host


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to fetch a repository: a host and the repository path on that host."""

    host: str  # API host[:port] (registry-1.docker.io for docker.io)
    repository: str
    mirror: bool = False
    domain: str = ""  # the reference's domain (docker.io), for credentials lookup

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


@dataclass(frozen=True, slots=True)
class HostSettings:
    """What the configuration says about one host (TLS, CAs, client cert)."""

    host: str
    insecure: bool  # plain HTTP allowed and TLS not verified
    loopback: bool  # plain HTTP allowed (TLS still verified when used)
    ca_files: tuple[Path, ...] = ()
    client_cert: tuple[Path, Path] | None = None


def _default_certs_dirs() -> list[Path]:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    dirs: list[Path] = []
    if os.environ.get("PYBUILD_CERTS_D"):
        dirs.extend(Path(p) for p in os.environ["PYBUILD_CERTS_D"].split(os.pathsep) if p)
    dirs += [
        Path(xdg) / "pybuild" / "certs.d",
        Path("/etc/pybuild/certs.d"),
        Path("/etc/containers/certs.d"),
        Path("/etc/docker/certs.d"),
    ]
    return dirs


def default_config_path() -> Path | None:
    """The registries file that applies, or None when there is none."""
    env = os.environ.get("PYBUILD_REGISTRIES_CONF")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "pybuild" / "registries.toml", Path("/etc/pybuild/registries.toml")):
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class RegistriesConfig:
    """The effective registry settings: the file plus command-line overrides."""

    registries: tuple[RegistryEntry, ...] = ()
    certs_dirs: tuple[Path, ...] = ()
    insecure_hosts: frozenset[str] = frozenset()  # --insecure-registry HOST
    tls_verify: bool = True  # --tls-verify=false applies to every host
    allow_foreign_urls: tuple[str, ...] = ()  # URL prefixes foreign layers may come from
    source: str = ""
    _cache: dict[str, HostSettings] = field(default_factory=dict, compare=False, repr=False)

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        insecure_hosts: Iterable[str] = (),
        tls_verify: bool = True,
        certs_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> RegistriesConfig:
        """Read ``path`` (default: default_config_path()); a missing default file is no error."""
        file = Path(path) if path is not None else default_config_path()
        doc: Mapping[str, Any] = {}
        if file is not None:
            import tomllib

            try:
                doc = tomllib.loads(file.read_text())
            except FileNotFoundError:
                if path is not None or os.environ.get("PYBUILD_REGISTRIES_CONF"):
                    raise ConfigError(str(file), "file not found") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(str(file), f"not valid TOML ({exc})") from None
        base = cls.from_dict(doc, source=str(file or ""))
        extra_dirs = tuple(Path(p) for p in certs_dirs)
        return replace(
            base,
            insecure_hosts=frozenset(insecure_hosts) | base.insecure_hosts,
            tls_verify=tls_verify and base.tls_verify,
            certs_dirs=extra_dirs + base.certs_dirs,
            _cache={},
        )

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "<dict>") -> RegistriesConfig:
        def fail(why: str) -> ConfigError:
            return ConfigError(source, why)

        entries = []
        for i, block in enumerate(doc.get("registry") or ()):
            if not isinstance(block, dict):
                raise fail(f"[[registry]] #{i + 1} is not a table")
            location = block.get("location") or block.get("prefix")
            if not isinstance(location, str) or not location:
                raise fail(f"[[registry]] #{i + 1} needs a 'location'")
            mirrors = []
            for m in block.get("mirror") or ():
                if not isinstance(m, dict) or not isinstance(m.get("location"), str):
                    raise fail(f"[[registry.mirror]] of {location} needs a 'location'")
                mirrors.append(Mirror(_strip_scheme(m["location"]), bool(m.get("insecure", False))))
            ca = block.get("ca") or ()
            entries.append(
                RegistryEntry(
                    _strip_scheme(location),
                    bool(block.get("insecure", False)),
                    bool(block.get("blocked", False)),
                    tuple(mirrors),
                    (ca,) if isinstance(ca, str) else tuple(ca),
                )
            )
        certs = tuple(Path(p) for p in doc.get("certs_d") or ())
        insecure = frozenset(str(h) for h in doc.get("insecure_registries") or ())
        foreign = tuple(str(u) for u in doc.get("allow_foreign_urls") or ())
        return cls(
            tuple(entries),
            certs + tuple(_default_certs_dirs()),
            insecure,
            bool(doc.get("tls_verify", True)),
            foreign,
            source,
        )

    # -- queries -------------------------------------------------------------------------
    def entry_for(self, name: str) -> RegistryEntry | None:
        """The most specific [[registry]] whose location is a prefix of ``domain/path``."""
        best: RegistryEntry | None = None
        for entry in self.registries:
            loc = entry.location.rstrip("/")
            if (name == loc or name.startswith(loc + "/")) and (
                best is None or len(loc) > len(best.location)
            ):
                best = entry
        return best

    def endpoints(self, ref: Reference, *, for_push: bool = False) -> list[Endpoint]:
        """Mirrors in order (pulls only), then the origin. Raises if the registry is blocked."""
        entry = self.entry_for(ref.name)
        if entry is not None and entry.blocked:
            raise RemoteError(f"registry {ref.domain}: blocked by {self.source or 'configuration'}")
        out: list[Endpoint] = []
        if entry is not None and not for_push:
            rest = ref.name[len(entry.location.rstrip("/")) :].lstrip("/")
            for mirror in entry.mirrors:
                repo = "/".join(p for p in (mirror.prefix, rest) if p)
                out.append(Endpoint(mirror.host, repo, mirror=True, domain=mirror.host))
        out.append(Endpoint(api_host(ref.domain), ref.path, domain=ref.domain))
        return out

    def host_settings(self, host: str) -> HostSettings:
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        insecure = (not self.tls_verify) or host in self.insecure_hosts
        ca_files: list[Path] = []
        for entry in self.registries:
            if entry.location.split("/", 1)[0] == host:
                insecure = insecure or entry.insecure
                ca_files.extend(Path(c) for c in entry.ca)
            for m in entry.mirrors:
                if m.host == host:
                    insecure = insecure or m.insecure
        client: tuple[Path, Path] | None = None
        names = [host] + (["docker.io", "index.docker.io"] if host == DOCKER_HUB_API else [])
        for base in self.certs_dirs:
            for name in names:
                d = base / name
                try:
                    files = sorted(d.iterdir())
                except OSError:
                    continue
                ca_files.extend(f for f in files if f.suffix == ".crt" and f.is_file())
                for f in files:
                    if f.suffix == ".cert" and (key := f.with_suffix(".key")).is_file() and client is None:
                        client = (f, key)
        settings = HostSettings(host, insecure, is_loopback(host), tuple(ca_files), client)
        self._cache[host] = settings
        return settings

    def foreign_allowed(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.allow_foreign_urls)


def _strip_scheme(location: str) -> str:
    for scheme in ("https://", "http://"):
        if location.startswith(scheme):
            return location[len(scheme) :]
    return location
