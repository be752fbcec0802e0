"""Config edits written as Dockerfile instructions: ``import -c 'CMD ["sh"]'`` (docker's
``--change``). Applies CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME
and WORKDIR to a ContainerConfig, with Dockerfile quoting and $VAR / ${VAR} / ${VAR:-x} /
${VAR:+x} expansion from the config's own environment. Pure; imports registry only.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import replace

from registry.errors import InvalidChange
from registry.model import ContainerConfig

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME",
             "WORKDIR")


def apply_changes(config: ContainerConfig, changes: Iterable[str]) -> ContainerConfig:
    """Apply each change line in order. Raises InvalidChange naming the line and the rule."""
    cmd_set = False
    for line in changes:
        text = line.strip()
        word, _, rest = text.partition(" ")
        if "\t" in word:
            word, _, more = word.partition("\t")
            rest = more + " " + rest
        instr = word.upper()
        rest = rest.strip()
        if instr not in SUPPORTED:
            raise InvalidChange(line, f"{word or 'empty line'} is not supported "
                                      f"(supported: {', '.join(SUPPORTED)})")
        env = config.env_dict()
        if instr in ("CMD", "ENTRYPOINT"):
            argv = _exec_or_shell(rest, config)
            if instr == "CMD":
                config, cmd_set = replace(config, cmd=argv), True
            else:
                # As in a Dockerfile: ENTRYPOINT drops an inherited CMD unless CMD was set here.
                config = replace(config, entrypoint=argv, cmd=config.cmd if cmd_set else None)
        elif instr == "ENV":
            pairs = _pairs(line, rest, env, "ENV")
            new = dict(env)
            for key, value in pairs:
                new[key] = value
                env[key] = value
            config = replace(config, env=tuple(f"{k}={v}" for k, v in new.items()))
        elif instr == "LABEL":
            labels = dict(config.labels)
            labels.update(_pairs(line, rest, env, "LABEL"))
            config = replace(config, labels=labels)
        elif instr == "EXPOSE":
            ports = set(config.exposed_ports)
            for word_ in _words(rest, env):
                ports.update(_ports(line, word_))
            config = replace(config, exposed_ports=tuple(sorted(ports)))
        elif instr == "VOLUME":
            vols = _json_list(rest) or _words(rest, env)
            if not vols or any(not v for v in vols):
                raise InvalidChange(line, "VOLUME needs at least one path")
            config = replace(config, volumes=tuple(sorted(set(config.volumes) | set(vols))))
        elif instr == "WORKDIR":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidChange(line, "WORKDIR takes exactly one path")
            path = words[0]
            if not path.startswith("/"):
                path = posixpath.join(config.working_dir or "/", path)
            config = replace(config, working_dir=posixpath.normpath(path))
        elif instr == "USER":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidChange(line, "USER takes exactly one user[:group]")
            config = replace(config, user=words[0])
        elif instr == "STOPSIGNAL":
            words = _words(rest, env)
            if len(words) != 1:
                raise InvalidChange(line, "STOPSIGNAL takes exactly one signal")
            config = replace(config, stop_signal=words[0])
        elif instr == "ONBUILD":
            if not rest:
                raise InvalidChange(line, "ONBUILD needs an instruction")
            config = replace(config, onbuild=(*config.onbuild, rest))
    return config


def _json_list(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _exec_or_shell(text: str, config: ContainerConfig) -> tuple[str, ...]:
    argv = _json_list(text)
    if argv is not None:
        return tuple(argv)
    shell = config.shell or ("/bin/sh", "-c")
    return (*shell, text)


def _pairs(line: str, text: str, env: Mapping[str, str], instr: str) -> list[tuple[str, str]]:
    words = _raw_words(text, env)
    if not words:
        raise InvalidChange(line, f"{instr} needs at least one key=value")
    if "=" not in words[0][0]:
        # legacy form: ENV key value with spaces
        key, _, value = text.partition(" ")
        if not value.strip():
            raise InvalidChange(line, f"{instr} {key} needs a value")
        return [(key, " ".join(w for w, _ in _raw_words(value.strip(), env)))]
    out = []
    for word, raw_key in words:
        if "=" not in raw_key:
            raise InvalidChange(line, f"{instr}: {word!r} is not key=value")
        key, _, value = word.partition("=")
        if not key:
            raise InvalidChange(line, f"{instr}: empty key")
        out.append((key, value))
    return out


def _ports(line: str, word: str) -> list[str]:
    spec, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidChange(line, f"EXPOSE: bad protocol {proto!r}")
    lo, dash, hi = spec.partition("-")
    try:
        start, end = int(lo), int(hi) if dash else int(lo)
    except ValueError:
        raise InvalidChange(line, f"EXPOSE: bad port {word!r}") from None
    if not (0 < start <= end <= 65535):
        raise InvalidChange(line, f"EXPOSE: bad port range {word!r}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _words(text: str, env: Mapping[str, str]) -> list[str]:
    """Split like a Dockerfile: quotes group, backslash escapes, variables expand (not inside
    single quotes)."""
    return [word for word, _ in _raw_words(text, env)]


def _raw_words(text: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """_words, each word with its raw text (to tell ``a=b`` from a quoted ``"a=b"``)."""
    words: list[tuple[str, str]] = []
    cur: list[str] = []
    raw: list[str] = []
    i, n = 0, len(text)
    in_word = False
    while i < n:
        c = text[i]
        if c in " \t\n":
            if in_word:
                words.append(("".join(cur), "".join(raw)))
                cur, raw, in_word = [], [], False
            i += 1
            continue
        in_word = True
        if c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise InvalidChange(text, "unterminated single quote")
            cur.append(text[i + 1:j])
            raw.append("'")
            i = j + 1
        elif c == '"':
            i += 1
            raw.append('"')
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    cur.append(text[i + 1])
                    i += 2
                elif text[i] == "$":
                    value, i = _expand(text, i, env)
                    cur.append(value)
                else:
                    cur.append(text[i])
                    i += 1
            if i >= n:
                raise InvalidChange(text, "unterminated double quote")
            i += 1
        elif c == "\\" and i + 1 < n:
            cur.append(text[i + 1])
            raw.append(text[i + 1])
            i += 2
        elif c == "$":
            value, i = _expand(text, i, env)
            cur.append(value)
            raw.append("$")
        else:
            cur.append(c)
            raw.append(c)
            i += 1
    if in_word:
        words.append(("".join(cur), "".join(raw)))
    return words


def _expand(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Expand the variable at text[i] == '$'; returns (value, next index)."""
    n = len(text)
    if i + 1 < n and text[i + 1] == "{":
        j = text.find("}", i + 2)
        if j < 0:
            raise InvalidChange(text, "missing '}' in variable")
        body = text[i + 2:j]
        for op in (":-", ":+"):
            if op in body:
                name, _, word = body.partition(op)
                value = env.get(name, "")
                if op == ":-":
                    return (value if value else word), j + 1
                return (word if value else ""), j + 1
        return env.get(body, ""), j + 1
    j = i + 1
    while j < n and (text[j].isalnum() or text[j] == "_"):
        j += 1
    if j == i + 1:
        return "$", i + 1
    return env.get(text[i + 1:j], ""), j
