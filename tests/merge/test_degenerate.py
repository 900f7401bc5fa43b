"""No silent wrong numbers (issue 22): degenerate but legal merges follow each method's formula on the space the
inputs span, non-finite numbers are refused before any work, and outputs that change nothing say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.merge.methods import METHODS, Contribution, MethodSettings
from tests.helpers import adapter_tensors, copy_adapter, leftovers

OUT, IN = 48, 40
runner = CliRunner()


def factors(rank: int, seed: int, b_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank x IN), B (OUT x rank); with b_rank < rank, B spans only b_rank directions (rank-deficient)."""
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rank, IN, generator=generator), torch.randn(OUT, rank, generator=generator)
    if b_rank is not None:
        b = b[:, :b_rank] @ torch.randn(b_rank, rank, generator=generator)
    return a, b


def contribution(a: torch.Tensor, b: torch.Tensor, weight: float = 1.0, scale: float = 2.0) -> Contribution:
    return Contribution(a=a, b=b, scale=scale, weight=weight)


def dense(contributions: list[Contribution]) -> list[torch.Tensor]:
    return [c.weight * c.scale * c.b.double() @ c.a.double() for c in contributions]


def merged(method: str, contributions: list[Contribution], **settings: object) -> torch.Tensor:
    result = METHODS[method].function(contributions, MethodSettings(**settings), torch.Generator().manual_seed(5))
    assert torch.isfinite(result.a).all() and torch.isfinite(result.b).all(), method
    return (result.b.double() @ result.a.double()).double()


def truncation(update: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(update, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> bool:
    return bool((actual - expected).norm() <= tolerance * max(expected.norm(), 1e-30))


# Dense definitions "on the space the inputs span": singular directions with a zero value do not exist, the
# nearest orthonormal matrix of a rank-deficient stack is the partial isometry on its span, all-zero tasks are absent.
def nonzero_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = int((s > 1e-5 * s[0]).sum()) if s[0] > 0 else 0
    return u[:, :k], s[:k], vh[:k]


def partial_isometry(matrix: torch.Tensor) -> torch.Tensor:
    u, _, vh = nonzero_svd(matrix)
    return u @ vh


def reference_tsv(updates: list[torch.Tensor], dimension: int) -> torch.Tensor:
    present = [u for u in updates if u.abs().max() > 0]
    keep = dimension // len(present)
    us, ss, vs = zip(*(nonzero_svd(u) for u in present))
    u_perp = partial_isometry(torch.cat([u[:, :keep] for u in us], 1))
    v_perp = partial_isometry(torch.cat([vh[:keep].T for vh in vs], 1))
    return u_perp @ torch.diag(torch.cat([s[:keep] for s in ss])) @ v_perp.T


def reference_iso_c(updates: list[torch.Tensor]) -> torch.Tensor:
    u, s, vh = nonzero_svd(sum(updates))
    return s.mean() * u @ vh


def test_tsv_of_an_adapter_with_itself_is_its_top_directions_each_once() -> None:
    a, b = factors(4, seed=1)
    update = dense([contribution(a, b)])[0]
    # two copies span 4 directions; each task keeps 4 / 2 = 2: the union is the adapter's top 2, each once
    assert close(merged("tsv", [contribution(a, b), contribution(a, b)]), truncation(update, 2))
    assert close(merged("tsv", [contribution(a, b), contribution(a, b)], task_fraction=1.0), update)


def test_an_untrained_adapter_is_absent_not_a_task_with_an_empty_share() -> None:
    """PEFT initialises B = 0: merging with it must give what merging without it gives (the whole adapter)."""
    a, b = factors(4, seed=1)
    untrained_a, _ = factors(4, seed=2)
    untrained = contribution(untrained_a, torch.zeros(OUT, 4))
    alone = [contribution(a, b)]
    update = dense(alone)[0]
    for method in ("tsv", "iso_cts"):
        with_zero = merged(method, [contribution(a, b), untrained])
        assert close(with_zero, merged(method, alone)), method
    assert close(merged("tsv", [contribution(a, b), untrained]), update)  # one task keeps all its directions
    assert close(merged("tsv", [contribution(a, b), contribution(a, b, weight=0.0)]), update)


@pytest.mark.parametrize("method", ["ties", "knots_ties", "core_ties"])
def test_ties_of_an_adapter_with_its_negation_keeps_nothing(method: str) -> None:
    """Every sign vote is an exact tie, and a tie elects nothing. knots_ties read its coordinates from the blocks of
    one SVD, which differ by ~1e-16 between equal updates: the votes elected that noise and kept 84 % of the input."""
    a, b = factors(4, seed=1)
    assert merged(method, [contribution(a, b), contribution(a, b, weight=-1.0)]).abs().max() == 0


@pytest.mark.parametrize("case", ["independent", "duplicated", "zero", "rank-deficient", "shared-a"])
def test_every_method_gives_finite_outputs_and_the_dense_definition(case: str) -> None:
    """Random inputs with the degenerate shapes users meet; every method finite, the exact ones exact."""
    first, second = factors(4, seed=3), factors(6, seed=4)
    pairs = {
        "independent": [first, second],
        "duplicated": [first, first],
        "zero": [first, (second[0], torch.zeros(OUT, 6))],
        "rank-deficient": [factors(4, seed=5, b_rank=1), second],
        "shared-a": [first, (first[0], factors(4, seed=6)[1])],  # the same A, different B
    }[case]
    contributions = [contribution(a, b, weight=w) for (a, b), w in zip(pairs, [0.8, 1.3])]
    updates = dense(contributions)
    exact = sum(updates)
    for method in METHODS:
        if method == "linear" and pairs[0][0].shape != pairs[1][0].shape:
            continue  # PEFT's linear needs equal ranks
        merged(method, contributions)  # finite
    assert close(merged("cat", contributions), exact)
    assert close(merged("core_dare", contributions, density=1.0), exact)  # nothing dropped: the weighted sum
    total_rank = sum(a.shape[0] for a, _ in pairs)
    assert close(merged("svd", contributions, rank=2), truncation(exact, 2), 1e-4)  # Eckart-Young
    spanned = min(  # the core space: span(all B) x span(all A^T)
        int(torch.linalg.matrix_rank(torch.cat([b for _, b in pairs], 1))),
        int(torch.linalg.matrix_rank(torch.cat([a for a, _ in pairs], 0))),
    )
    dimension = min(OUT, IN, total_rank, spanned)
    assert close(merged("tsv", contributions), reference_tsv(updates, dimension), 1e-4)
    assert close(merged("iso_c", contributions), reference_iso_c(updates), 1e-4)


def run(*args: str):
    return runner.invoke(app, ["merge", *args])


def refused(result, out: Path, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists() and leftovers(out.parent) == []


@pytest.mark.parametrize("weights", ["nan,1", "1,inf", "-inf,1"])
def test_a_non_finite_weight_is_refused(task_adapter: Path, align_adapter: Path, tmp_path: Path, weights: str) -> None:
    out = tmp_path / "m"
    refused(run(str(task_adapter), str(align_adapter), "--weights", weights, "--out", str(out)), out, 2, "--weights", "finite")


@pytest.mark.parametrize("key", ["alpha=nan", "alpha=.inf", "alpha=-.inf"])
def test_a_non_finite_recipe_key_is_refused(task_adapter: Path, align_adapter: Path, tmp_path: Path, key: str) -> None:
    out = tmp_path / "m"
    result = run(str(task_adapter), str(align_adapter), "--method", "iso_c", "--set", key, "--out", str(out))
    refused(result, out, 2, f"--set {key}", "finite number")


def test_a_non_finite_weight_in_a_recipe_file_names_the_key(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"sources:\n  - path: {task_adapter}\n  - path: {align_adapter}\n    weight: .nan\n")
    out = tmp_path / "m"
    refused(run("--recipe", str(recipe), "--out", str(out)), out, 2, "sources.1.weight", "finite number")


@pytest.mark.parametrize("method", ["cat", "svd", "tsv", "iso_c", "iso_cts", "knots_ties", "core_ties", "core_dare", "ties"])
def test_a_non_finite_input_tensor_is_refused_before_any_work(
    task_adapter: Path, align_adapter: Path, tmp_path: Path, method: str
) -> None:
    broken = copy_adapter(task_adapter, tmp_path / "broken")
    weights = adapter_tensors(broken)
    key = sorted(k for k in weights if "lora_B" in k)[3]
    weights[key][1, 0] = float("inf")
    save_file(weights, str(broken / "adapter_model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "m"
    extra = ["--rank", "8"] if method in ("svd", "ties") else []
    refused(run(str(broken), str(align_adapter), "--method", method, *extra, "--out", str(out)), out, 2, key, "NaN or Inf")


@pytest.mark.parametrize("flags", [["--weights", "0,0"], ["--method", "iso_c", "--set", "alpha=0"]])
def test_an_all_zero_output_is_written_with_a_warning(task_adapter: Path, align_adapter: Path, tmp_path: Path, flags) -> None:
    out = tmp_path / "m"
    result = run(str(task_adapter), str(align_adapter), *flags, "--out", str(out))
    assert result.exit_code == 0, result.output
    stderr = " ".join(result.stderr.split())  # rich wraps long lines
    assert "warning:" in stderr and "changes nothing" in stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["modules"] and all(entry["zero"] for entry in report["modules"].values())


def test_a_normal_merge_has_no_zero_warning(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> None:
    result = run(str(task_adapter), str(align_adapter), "--out", str(tmp_path / "m"))
    assert result.exit_code == 0 and "changes nothing" not in result.stderr


def test_a_whole_recipe_check_reads_without_validator_jargon(task_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = run(str(task_adapter), str(task_adapter), "--set", "density=0.5", "--out", str(out))
    refused(result, out, 2, "method 'cat' does not use 'density'")
    assert "Value error" not in result.stderr and "(top level)" not in result.stderr


def test_the_reported_error_includes_rounding_to_the_output_dtype(
    task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    """The report speaks of what was written: bfloat16 factors of an exact merge are ~4e-3 away from the sum."""
    out = tmp_path / "bf16"
    result = run(str(task_adapter), str(align_adapter), "--dtype", "bfloat16", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "merge_report.json").read_text())
    written = adapter_tensors(out)
    name, entry = next(iter(report["modules"].items()))
    a = written[f"base_model.model.{name}.lora_A.weight"].double()
    b = written[f"base_model.model.{name}.lora_B.weight"].double()
    exact = run(str(task_adapter), str(align_adapter), "--out", str(tmp_path / "f32"))
    assert exact.exit_code == 0
    f32 = adapter_tensors(tmp_path / "f32")
    target = f32[f"base_model.model.{name}.lora_B.weight"].double() @ f32[f"base_model.model.{name}.lora_A.weight"].double()
    measured = float((b @ a - target).norm() / target.norm())
    assert 1e-4 < entry["dtype_relative_error"] < 2e-2
    assert entry["dtype_relative_error"] == pytest.approx(measured, rel=1e-3)
    assert report["max_dtype_relative_error"] >= entry["dtype_relative_error"] and "rounding" in " ".join(result.stderr.split())


def test_two_untrained_adapters_give_a_zero_merge_with_a_warning(task_adapter: Path, tmp_path: Path) -> None:
    """PEFT's initialisation (B = 0) in both inputs: the output is legal, zero, and says so."""
    zeros = []
    for name in ("z1", "z2"):
        folder = copy_adapter(task_adapter, tmp_path / name)
        weights = adapter_tensors(folder)
        save_file(
            {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
            str(folder / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        zeros.append(str(folder))
    result = run(*zeros, "--out", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    assert "changes nothing" in " ".join(result.stderr.split())
