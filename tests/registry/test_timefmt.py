"""registry.timefmt.human_duration against docker's go-units HumanDuration table (the same
words `docker ps` prints), including its rounding of hours (int(h + 0.5))."""

from __future__ import annotations

import pytest

from registry.timefmt import human_duration

CASES = [
    (0, "Less than a second"), (0.9, "Less than a second"), (1, "1 second"), (59.9, "59 seconds"),
    (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"),
    (3600, "About an hour"), (5399, "About an hour"), (5400, "2 hours"),   # 1.5 h rounds up
    (47 * 3600, "47 hours"), (48 * 3600, "2 days"), (13 * 86400, "13 days"),
    (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"), (60 * 86400, "2 months"),
    (729 * 86400, "24 months"), (730 * 86400, "2 years"), (3650 * 86400, "10 years"),
]


@pytest.mark.parametrize(("seconds", "text"), CASES)
def test_human_duration_matches_docker(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_the_cli_formatter_is_the_same_function() -> None:
    from builder.commands import _format

    assert _format.human_duration is human_duration
    assert _format.since(None) == "N/A"
