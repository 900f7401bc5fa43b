"""What the demo runs: the model, the languages by role, the sizes, and the quick variant CI runs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DemoPlan:
    model: str
    supervised: tuple[str, ...] = ("en", "fr")
    aligned: tuple[str, ...] = ("ru", "zh_CN", "ja")  # transfer languages with alignment pairs
    unaligned: tuple[str, ...] = ("ko",)  # transfer languages without: does alignment spread beyond its pairs?
    test_entities: int = 50  # x 6 languages x 3 variants = 900 generations, ~3 min on 2 cores
    probe_sentences: int = 100  # per language, multiway gettext test sentences
    max_new_tokens: int = 10  # the longest answer, {"currency": "XAF"}, is 7 tokens with EOS
    recipe_overrides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def transfer(self) -> tuple[str, ...]:
        return (*self.aligned, *self.unaligned)


FULL = DemoPlan(model="bundled:gemma-3-270m")
# CI's variant: the same pipeline on the smaller bundled model with a handful of steps and items (~1 minute).
QUICK = DemoPlan(
    model="bundled:smollm2-135m",
    test_entities=4,
    probe_sentences=12,
    recipe_overrides={
        "align": ["max_steps=3", "batch_size=4", "align.layer=null"],
        "task": ["max_steps=3", "batch_size=4"],
        "joint": ["max_steps=6", "batch_size=4"],  # bench/quality.py --quick
    },
)
