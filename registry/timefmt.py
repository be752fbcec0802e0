"""Durations as docker prints them (go-units' HumanDuration): `ps` STATUS / RUNNING FOR, the
CREATED columns. In the bottom layer because both runtime (container views) and builder (the
CLI tables) print them. Pure; stdlib only."""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration: "Less than a second", "About a minute", "3 hours"..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"
