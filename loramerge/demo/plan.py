"""What the demo runs: the model, the languages by role, the sizes, and the quick variant CI runs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DemoPlan:
    model: str
    supervised: tuple[str, ...] = ("en",)
    aligned: tuple[str, ...] = ("ja", "ru", "zh_CN")  # transfer languages with alignment pairs
    unaligned: tuple[str, ...] = ("fr", "de")  # transfer languages without: does alignment spread beyond its pairs?
    # Test items per label and language: the first of the topic test split's items 0-89 of each label, the ones the
    # transfer study has already read (items 90 and up stay unread for later studies). 60 a label is 360 a language,
    # 1,800 transfer items: on dev, 2,520 paired items detect a gain of 1.8-2.2 points with 80 % power
    # (BENCHMARKS.md, "The demo's cheaper setting on dev"), so 1,800 detect ~2.2-2.6, below the study's +3.0;
    # all 90 would cost ~110 s more of evaluation for a detectable gain ~0.4 points smaller.
    test_per_label: int = 60
    probe_sentences: int = 100  # per language: dev sentences of the task, in all six languages
    max_new_tokens: int = 4  # a label is one token with Gemma-3's tokenizer, then the stop token
    recipes: str = "demo"  # the shipped recipe group (recipes/GROUP/*.yaml) the steps start from
    recipe_overrides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def transfer(self) -> tuple[str, ...]:
        return (*self.aligned, *self.unaligned)


FULL = DemoPlan(model="bundled:gemma-3-270m")
# CI's variant: the same pipeline on the smaller bundled model with a handful of steps and items (~1 minute).
QUICK = DemoPlan(
    model="bundled:smollm2-135m",
    test_per_label=2,
    probe_sentences=12,
    recipe_overrides={
        "align": ["max_steps=3", "batch_size=4", "align.layer=null"],
        "task": ["max_steps=3", "batch_size=4"],
        "joint": ["max_steps=6", "batch_size=4", "align.layer=null"],
    },
)
