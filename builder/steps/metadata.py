"""Metadata instructions -> config changes only (no layer; history marked empty_layer), with docker's
field semantics (ENTRYPOINT resets an inherited CMD, ENV expands with the env before it, EXPOSE
defaults to /tcp and expands ranges). As in BuildKit they are not cache vertices: their effect reaches
later keys through what RUN/COPY hash. Imports builder (state, steps, errors), grammar.ast, registry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from builder.cachekey import PROXY_ARGS
from builder.errors import BuildError
from builder.state import StageState
from builder.steps import Prepared, StepEnv, StepOutcome, expand, expand_words
from grammar import ast
from registry.model import ContainerConfig

HISTORY_COMMENT = "pybuild.dockerfile.v0"


def command_argv(command: ast.CommandLine, shell: tuple[str, ...]) -> list[str]:
    """Exec form as written; shell form wrapped in the stage's SHELL (default /bin/sh -c)."""
    if isinstance(command, tuple):
        return list(command)
    return [*shell, command]


class _Meta:
    """Shared execute: the config computed in prepare, no layer."""

    def execute(self, prep: Prepared, state: StageState, env: StepEnv) -> StepOutcome:
        del env
        assert prep.config is not None
        return StepOutcome(None, prep.config, prep.created_by, HISTORY_COMMENT,
                           author=prep.author if prep.author is not None else state.author)

    def _prep(self, ins: ast.Instruction, state: StageState, op: Mapping[str, Any],
              config: ContainerConfig, created_by: str, **kw: Any) -> Prepared:
        del op
        return Prepared(ins, None, created_by, config=config, makes_layer=False, **kw)


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    out = []
    found = False
    for item in env:
        if item.partition("=")[0] == key:
            if not found:
                out.append(f"{key}={value}")
                found = True
            continue
        out.append(item)
    if not found:
        out.append(f"{key}={value}")
    return out


def _expand_pairs(ins: ast.Env | ast.Label, state: StageState, env: StepEnv) -> list[tuple[str, str]]:
    """ENV/LABEL ``key=value`` pairs with both sides expanded; a blank key is an error."""
    values = state.expand_env()
    pairs = [(expand(k, values, env.escape, ins.span), expand(v, values, env.escape, ins.span))
             for k, v in ins.pairs]
    if any(not k for k, _ in pairs):
        raise BuildError(f"{ins.KIND} names can not be blank", span=ins.span)
    return pairs


class EnvHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Env)
        pairs = _expand_pairs(ins, state, env)
        new_env = list(state.config.env)
        for k, v in pairs:
            new_env = _set_env(new_env, k, v)
        config = replace(state.config, env=tuple(new_env))
        text = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
        return self._prep(ins, state, {"pairs": pairs}, config, text)


class LabelHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Label)
        pairs = _expand_pairs(ins, state, env)
        config = replace(state.config, labels={**state.config.labels, **dict(pairs)})
        text = "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
        return self._prep(ins, state, {"pairs": pairs}, config, text)


class ArgHandler(_Meta):
    """ARG name[=default]: the --build-arg value wins, else the default, else the global
    (pre-FROM) value when declared without a default."""

    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Arg)
        build_args = env.opts.build_args
        meta: Mapping[str, str | None] = state.extra.get("meta_args", {})
        predefined: Mapping[str, str] = state.extra.get("predefined", {})
        resolved: dict[str, str | None] = {}
        scope = dict(state.args)
        for name, default in ins.args:
            value: str | None
            if name in build_args:
                value = build_args[name]
            elif default is not None:
                value = expand(default, {**scope, **state.env_map()}, env.escape, ins.span)
            elif name in predefined:
                value = predefined[name]
            else:
                value = meta.get(name)
            resolved[name] = value
            if value is not None:
                scope[name] = value

        def local(st: StageState) -> None:
            for k, v in resolved.items():
                if v is None:
                    st.args.pop(k, None)
                elif k in PROXY_ARGS:
                    st.proxy[k] = v
                else:
                    st.args[k] = v

        return Prepared(ins, None, "", local=local,
                        config=state.config, makes_layer=False, data={"no_history": True})


def _ports(words: list[str], span: ast.Span) -> list[str]:
    out: list[str] = []
    for word in words:
        port, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise BuildError(f"EXPOSE {word!r}: invalid protocol {proto!r}", span=span)
        if ":" in port:
            raise BuildError(f"EXPOSE {word!r}: a host port cannot be given in a Dockerfile",
                             span=span, hint="publish ports with `pybuild run -p`")
        lo, dash, hi = port.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise BuildError(f"EXPOSE {word!r}: invalid port", span=span)
        first, last = int(lo), int(hi) if dash else int(lo)
        if not 0 < first <= last <= 65535:
            raise BuildError(f"EXPOSE {word!r}: port out of range", span=span)
        out += [f"{p}/{proto}" for p in range(first, last + 1)]
    return out


class ExposeHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Expose)
        values = state.expand_env()
        words: list[str] = []
        for raw in ins.ports:
            words += expand_words(raw, values, env.escape, ins.span)
        ports = _ports(words, ins.span)
        merged = tuple(sorted(set(state.config.exposed_ports) | set(ports)))
        config = replace(state.config, exposed_ports=merged)
        return self._prep(ins, state, {"ports": ports}, config, "EXPOSE " + " ".join(ports))


class VolumeHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Volume)
        values = state.expand_env()
        paths = [expand(p, values, env.escape, ins.span) for p in ins.paths]
        if any(not p.strip() for p in paths):
            raise BuildError("VOLUME specified can not be an empty string", span=ins.span)
        merged = tuple(sorted(set(state.config.volumes) | set(paths)))
        config = replace(state.config, volumes=merged)
        return self._prep(ins, state, {"paths": paths}, config, "VOLUME " + json.dumps(paths))


class UserHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.User)
        user = expand(ins.user, state.expand_env(), env.escape, ins.span)
        return self._prep(ins, state, {"user": user}, replace(state.config, user=user), f"USER {user}")


class StopSignalHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.StopSignal)
        sig = expand(ins.signal, state.expand_env(), env.escape, ins.span)
        return self._prep(ins, state, {"signal": sig}, replace(state.config, stop_signal=sig),
                          f"STOPSIGNAL {sig}")


class CmdHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Cmd)
        argv = command_argv(ins.command, state.shell)

        def local(st: StageState) -> None:
            st.cmd_set = True

        return self._prep(ins, state, {"cmd": argv}, replace(state.config, cmd=tuple(argv)),
                          "CMD " + json.dumps(argv), local=local)


class EntrypointHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Entrypoint)
        argv = command_argv(ins.command, state.shell)
        cmd = state.config.cmd if state.cmd_set else None
        config = replace(state.config, entrypoint=tuple(argv), cmd=cmd)
        return self._prep(ins, state, {"entrypoint": argv, "cmd_set": state.cmd_set}, config,
                          "ENTRYPOINT " + json.dumps(argv))


class ShellHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Shell)
        if not ins.shell:
            raise BuildError("SHELL requires at least one argument", span=ins.span)
        return self._prep(ins, state, {"shell": list(ins.shell)}, replace(state.config, shell=ins.shell),
                          "SHELL " + json.dumps(list(ins.shell)))


class HealthcheckHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Healthcheck)
        hc: dict[str, Any] = {"Test": list(ins.test)}
        for field_name, key in (("interval", "Interval"), ("timeout", "Timeout"),
                                ("start_period", "StartPeriod"), ("start_interval", "StartInterval"),
                                ("retries", "Retries")):
            value = getattr(ins, field_name)
            if value:
                hc[key] = value
        config = replace(state.config, healthcheck=hc)
        text = "HEALTHCHECK " + ("NONE" if ins.kind == "NONE" else json.dumps(hc))
        return self._prep(ins, state, {"healthcheck": hc}, config, text)


class OnbuildHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Onbuild)
        triggers = (*state.config.onbuild, ins.expression)
        return self._prep(ins, state, {"trigger": ins.expression}, replace(state.config, onbuild=triggers),
                          f"ONBUILD {ins.expression}")


class MaintainerHandler(_Meta):
    def prepare(self, ins: ast.Instruction, state: StageState, env: StepEnv) -> Prepared:
        assert isinstance(ins, ast.Maintainer)
        name = expand(ins.name, state.expand_env(), env.escape, ins.span)

        def local(st: StageState) -> None:
            st.author = name

        return self._prep(ins, state, {"author": name}, state.config, f"MAINTAINER {name}",
                          local=local, author=name)


HANDLERS: dict[type[ast.Instruction], Any] = {
    ast.Env: EnvHandler(), ast.Label: LabelHandler(), ast.Arg: ArgHandler(),
    ast.Expose: ExposeHandler(), ast.Volume: VolumeHandler(), ast.User: UserHandler(),
    ast.StopSignal: StopSignalHandler(), ast.Cmd: CmdHandler(), ast.Entrypoint: EntrypointHandler(),
    ast.Shell: ShellHandler(), ast.Healthcheck: HealthcheckHandler(), ast.Onbuild: OnbuildHandler(),
    ast.Maintainer: MaintainerHandler(),
}
