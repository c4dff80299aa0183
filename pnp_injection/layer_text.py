"""Reading the layer texts users type (`custom_layers` of both wings)."""
from __future__ import annotations


def numbers(text: str) -> list[int]:
    """'4, 6-8' -> [4, 6, 7, 8]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out
