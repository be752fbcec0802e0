"""Image references parsed and normalised exactly like Docker's distribution/reference.

``busybox`` → ``docker.io/library/busybox:latest``; ``host:port/repo[:tag][@sha256:…]`` kept
as given; repository names must be lowercase; a bad reference raises InvalidReference
naming the text and the rule it broke. Imports registry (digest, errors) only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from registry.digest import Digest
from registry.errors import InvalidDigest, InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"

_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A fully normalised reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """``domain/path`` (docker's Name())."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        return self.path

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form docker prints: ``busybox:latest``, ``me/app:1``, ``host:5000/x:y``."""
        name = self.familiar_name()
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    def familiar_name(self) -> str:
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX):]:
                path = path[len(OFFICIAL_PREFIX):]
            return path
        return self.name

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise InvalidReference(tag, "invalid tag format")
        return replace(self, tag=tag, digest=None)

    @property
    def object(self) -> str:
        """What a registry is asked for: the digest if present, else the tag."""
        return str(self.digest) if self.digest else (self.tag or DEFAULT_TAG)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise like ``docker pull`` does (ParseNormalizedNamed + TagNameOnly).

    Raises InvalidReference for anything docker would refuse.
    """
    original = text
    if not text:
        raise InvalidReference(original, "empty reference")
    if _HEX64_RE.match(text):
        raise InvalidReference(original, "cannot specify 64-byte hexadecimal strings as a name")
    name, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest:
            raise InvalidReference(original, f"invalid digest {digest_text!r}") from None
    tag: str | None = None
    # The tag is after the last ':' that follows the last '/' (a port lives before a '/').
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidReference(original, "invalid tag format")
    if not name:
        raise InvalidReference(original, "missing repository name")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.match(domain):
        raise InvalidReference(original, f"invalid registry host {domain!r}")
    if path.lower() != path and _PATH_RE.match(path.lower()):
        raise InvalidReference(original, "repository name must be lowercase")
    if not _PATH_RE.match(path):
        raise InvalidReference(original, "invalid reference format")
    if len(f"{domain}/{path}") > NAME_TOTAL_MAX:
        raise InvalidReference(original, f"repository name must not be more than {NAME_TOTAL_MAX} characters")
    if default_tag and tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)

