"""Comma-separated values from flags and recipes: `en,fr` and `1,0.5`, with errors that name the flag."""

from __future__ import annotations

import math

from loramerge.errors import LoramergeError


def comma_list(text: str | None) -> tuple[str, ...]:
    """'en, fr,,de' -> ('en', 'fr', 'de'): the non-empty, stripped parts of a comma-separated flag."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def parse_float_list(text: str, flag: str, example: str = "1.0,0.5") -> list[float]:
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise LoramergeError(f"{flag} {text!r}: {item.strip()!r} is not a number; expected e.g. {flag} {example}") from None
        if not math.isfinite(values[-1]):
            raise LoramergeError(f"{flag} {text!r}: {item.strip()!r} is not a finite number; expected e.g. {flag} {example}")
    return values
