"""A stage's state while it builds: the config so far, layers, history, ARGs in scope, the shell and
the chain's cache key. Words expand with ARGs overlaid by ENV (ENV wins); RUN sees the image env plus
declared ARGs not shadowed by ENV (proxy args included, never hashed). Imports builder.cachekey and
registry (model, digest) only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.cachekey import PROXY_ARGS
from registry.digest import Digest
from registry.model import ContainerConfig, Descriptor, History, chain_ids

DEFAULT_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True, slots=True)
class LayerRef:
    descriptor: Descriptor
    diff_id: Digest
    size: int = 0                 # uncompressed bytes (0 when unknown: base layers)


@dataclass
class StageState:
    name: str
    index: int
    platform: str
    key: Digest
    config: ContainerConfig = field(default_factory=ContainerConfig)
    layers: list[LayerRef] = field(default_factory=list)
    history: list[History] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)       # declared ARGs in scope
    proxy: dict[str, str] = field(default_factory=dict)      # proxy build args (RUN env only)
    cmd_set: bool = False
    author: str | None = None
    base_name: str = ""
    base_digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # -- environments --------------------------------------------------------------------------
    def env_map(self) -> dict[str, str]:
        return self.config.env_dict()

    def expand_env(self) -> dict[str, str]:
        """What ``$VAR`` in a Dockerfile word sees: ARG values overlaid by ENV."""
        return {**self.args, **self.env_map()}

    def run_env(self) -> list[str]:
        """The environment of a RUN: the image env, then ARGs not set by ENV, then proxies."""
        env = list(self.config.env)
        have = self.env_map()
        for name, value in self.args.items():
            if name not in have:
                env.append(f"{name}={value}")
        for name, value in self.proxy.items():
            if name not in have and name not in self.args:
                env.append(f"{name}={value}")
        return env

    def hashed_args(self) -> dict[str, str]:
        """ARG values that reach RUN and therefore its cache key (proxies excluded)."""
        have = self.env_map()
        return {k: v for k, v in sorted(self.args.items()) if k not in have and k not in PROXY_ARGS}

    @property
    def shell(self) -> tuple[str, ...]:
        return tuple(self.config.shell) if self.config.shell else DEFAULT_SHELL

    @property
    def workdir(self) -> str:
        return self.config.working_dir or "/"

    @property
    def diff_ids(self) -> list[Digest]:
        return [layer.diff_id for layer in self.layers]

    def chain_id(self) -> str | None:
        ids = chain_ids(self.diff_ids)
        return str(ids[-1]) if ids else None

    def copy(self) -> StageState:
        return StageState(self.name, self.index, self.platform, self.key, self.config,
                          list(self.layers), list(self.history), dict(self.args), dict(self.proxy),
                          self.cmd_set, self.author, self.base_name, self.base_digest, dict(self.extra))
