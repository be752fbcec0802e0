"""Dockerfile parsing speed: warm parses of a 2,000-line Dockerfile (target < 100 ms) and
`pybuild parse` of a small Dockerfile as a whole process (target < 250 ms).

    .venv/bin/python bench/parse_bench.py [--runs N] [--file DOCKERFILE]

Prints medians (and min/max) over several runs. The 2,000-line file is generated (a realistic
mix: multi-stage, ARG/ENV/LABEL, RUN with continuations and comments, heredocs, exec form,
--mount flags, COPY --from) unless --file is given. Not a test: numbers depend on the machine.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMALL = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.12-slim
FROM ${BASE} AS build
WORKDIR /src
COPY requirements.txt .
RUN --mount=type=cache,target=/root/.cache/pip \\
    pip install -r requirements.txt
COPY . .
FROM ${BASE}
COPY --from=build /src /app
USER 1000:1000
CMD ["python", "-m", "app"]
"""

STAGE = """\
FROM --platform=$BUILDPLATFORM golang:1.22-alpine AS build{n}
ARG TARGETOS TARGETARCH VERSION=1.{n}.0
ENV CGO_ENABLED=0 \\
    GOFLAGS="-trimpath -mod=readonly" \\
    GOPATH=/go
LABEL org.opencontainers.image.version="${{VERSION}}" org.opencontainers.image.title=svc{n}
WORKDIR /src/svc{n}
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \\
    --mount=type=cache,target=/root/.cache/go-build \\
    go mod download && \\
    # keep the module cache warm
    go mod verify
COPY --link . .
RUN <<EOF
set -eux
go vet ./...
go test -short ./...
EOF
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH \\
    go build -ldflags "-X main.version=${{VERSION}}" -o /out/svc{n} ./cmd/svc{n}
FROM alpine:3.19 AS run{n}
RUN apk add --no-cache ca-certificates tzdata \\
    && addgroup -S app && adduser -S app -G app
COPY --from=build{n} --chown=app:app /out/svc{n} /usr/local/bin/svc{n}
COPY <<-"CONF" /etc/svc{n}.conf
\tlisten = ":80{n:02d}"
\tlog_level = "info"
\tCONF
EXPOSE 80{n:02d}/tcp
VOLUME ["/var/lib/svc{n}"]
HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD ["wget", "-qO-", "http://localhost:80{n:02d}/health"]
USER app
ENTRYPOINT ["/usr/local/bin/svc{n}"]
CMD ["--config", "/etc/svc{n}.conf"]

"""


def big_dockerfile(lines: int = 2000) -> str:
    """Whole stages up to ``lines`` lines, then trimmed at a stage boundary-safe point."""
    stages: list[str] = []
    total = 0
    n = 0
    while total + STAGE.count("\n") <= lines:
        stages.append(STAGE.format(n=n))
        total += STAGE.count("\n")
        n += 1
    text = "".join(stages)
    filler = lines - total  # top up with simple one-line instructions
    text += "".join(f"RUN echo filler {i}\n" for i in range(filler))
    return text


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(label: str, samples: list[float], target: float | None = None) -> bool:
    med = statistics.median(samples)
    verdict = ""
    ok = True
    if target is not None:
        ok = med < target
        verdict = f"  target < {target:.0f} ms: {'ok' if ok else 'MISSED'}"
    print(f"{label:<48} median {med:7.1f} ms  (min {min(samples):6.1f}, max {max(samples):6.1f}, "
          f"n={len(samples)}){verdict}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--file", help="parse this Dockerfile instead of the generated 2,000 lines")
    args = ap.parse_args()

    import grammar

    text = Path(args.file).read_text() if args.file else big_dockerfile()
    nlines = text.count("\n")
    df = grammar.parse(text)  # warm: grammar loaded, lexer regexes compiled
    print(f"Dockerfile: {nlines} lines, {len(df.instructions)} instructions, {len(df.stages)} stages")
    ok = report(f"grammar.parse, {nlines} lines, warm", timed(lambda: grammar.parse(text), args.runs), 100)
    report(f"grammar.to_buildkit_json, {nlines} lines, warm",
           timed(lambda: grammar.to_buildkit_json(text), args.runs))
    report(f"grammar.parse, {SMALL.count(chr(10))} lines, warm",
           timed(lambda: grammar.parse(SMALL), args.runs))

    exe = REPO / ".venv" / "bin" / "pybuild"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "builder"]
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "Dockerfile"
        small.write_text(SMALL)
        subprocess.run([*cmd, "parse", str(small)], capture_output=True, check=True)  # fills the lark cache
        for extra in ([], ["--json"]):
            label = f"`pybuild parse {' '.join([*extra, '<12 lines>'])}` process"
            samples = timed(lambda extra=extra: subprocess.run([*cmd, "parse", *extra, str(small)],
                                                               capture_output=True, check=True), args.runs)
            ok = report(label, samples, 250) and ok
        code = f"import grammar; grammar.parse(open({str(small)!r}).read())"
        report("python -c 'import grammar; grammar.parse(...)'",
               timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO), args.runs))
        report("python -c pass (interpreter start, for scale)",
               timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.runs))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
