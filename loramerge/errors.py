"""User-facing errors: one line that says what is wrong, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable


class LoramergeError(Exception):
    """A problem with the user's input. The CLI prints it on one line and exits with code 2."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        flat = [" ".join(problem.split()) for problem in self.problems]
        if len(flat) == 1:
            return flat[0]
        return f"{len(flat)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(flat, 1))


class ProblemList:
    """Collects every problem in an input so they are reported at once, not one per run."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise LoramergeError(self.problems)
