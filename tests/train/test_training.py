"""The shared trainer on tiny random models: behaviour, not internals."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.recipes import load_recipe
from loramerge.testing.tiny import load_model
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import train_adapter
from tests.helpers import adapter_tensors, leftovers

TINY = "recipes/tiny/tiny-{}.yaml"


def recipe(kind: str, **flags) -> TrainRecipe:
    return load_recipe(TrainRecipe, __import__("pathlib").Path(TINY.format(kind)), flags=flags)


def align_args(model_dir, pairs, *extra: str) -> list[str]:
    """train-align on the tiny recipe for 2 steps."""
    return [
        "train-align",
        "--model",
        str(model_dir),
        "--pairs",
        str(pairs),
        "--recipe",
        TINY.format("align"),
        "--max-steps",
        "2",
        *extra,
    ]


def adapter_layers(folder) -> set[int]:
    return {int(key.split(".layers.")[1].split(".")[0]) for key in adapter_tensors(folder)}


def losses(folder, key: str) -> list[float]:
    return [
        row[key]
        for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        if key in row and "final" not in row
    ]


def falls(values: list[float], by: float) -> bool:
    """The mean of the last quarter of the logged losses is at least `by` (a fraction) below the first quarter's:
    one lucky last value below the first would not do."""
    quarter = max(1, len(values) // 4)
    first, last = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
    return last < (1 - by) * first


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])
def test_alignment_loss_falls_and_only_lower_layers_get_lora(tiny_model_dir, example_data, tmp_path, architecture):
    model_dir = tiny_model_dir(architecture)
    out = tmp_path / "align"
    result = train_adapter(recipe("align", model=str(model_dir), pairs=str(example_data["pairs"]), max_steps=16), "align", out)
    values = losses(out, "align_loss")
    assert all(torch.isfinite(torch.tensor(values)))
    assert falls(values, by=0.3), values  # batches differ, so single steps are noisy: compare quarters
    assert adapter_layers(out) == {0, 1}  # k = round(4 / 2) = 2: blocks 0 and 1 feed hidden_states[2]
    assert result.metrics["align_loss"] == pytest.approx(values[-1])


def test_task_training_changes_only_lora_and_loads_in_peft(tiny_model_dir, example_data, tmp_path):
    from peft import PeftModel

    model_dir = tiny_model_dir("llama")
    out = tmp_path / "task"
    train_adapter(recipe("task", model=str(model_dir), data=str(example_data["task"]), max_steps=16), "task", out)
    values = losses(out, "task_loss")
    assert falls(values, by=0.02), values  # lr 1e-3 on a random model: about -3% in 16 steps
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values  # and every logged step lower
    base = load_model(model_dir)
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, str(out))
    after = peft_model.base_model.model.state_dict()
    for name, tensor in before.items():  # the frozen base is untouched by loading
        key = name.replace(".weight", ".base_layer.weight") if f"{name.rsplit('.', 1)[0]}.base_layer.weight" in after else name
        assert torch.equal(after[key], tensor), name
    trained = adapter_tensors(out)
    assert all(".lora_" in key for key in trained) and any(t.abs().sum() > 0 for k, t in trained.items() if "lora_B" in k)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml", "metrics.jsonl"} <= names
    assert leftovers(tmp_path) == [] and not (tmp_path / "task.run").exists()


def test_joint_training_alternates_as_configured(tiny_model_dir, example_data, tmp_path):
    model_dir = tiny_model_dir("llama")
    settings = recipe(
        "joint", model=str(model_dir), data=str(example_data["task"]), pairs=str(example_data["pairs"]), max_steps=9
    )
    settings.task_per_align = [2, 1]
    result = train_adapter(settings, "task", tmp_path / "joint")
    assert result.state.micro_batches == {"task": 6, "align": 3}
    assert {"task_loss", "align_loss"} <= set(result.metrics)
    # joint adapters cover every layer: the task loss reaches all blocks
    assert adapter_layers(tmp_path / "joint") == {0, 1, 2, 3}


def test_eval_sets_are_scored(tiny_model_dir, example_data, tmp_path):
    model_dir = tiny_model_dir("llama")
    settings = recipe(
        "joint",
        model=str(model_dir),
        data=str(example_data["task"]),
        pairs=str(example_data["pairs"]),
        eval_data=str(example_data["dev_task"]),
        eval_pairs=str(example_data["dev_pairs"]),
        eval_every=2,
        max_steps=4,
    )
    result = train_adapter(settings, "task", tmp_path / "joint")
    assert {"eval_task_loss", "eval_align_loss", "eval_align_batch_accuracy"} <= set(result.metrics)
    assert {"eval_retrieval", "eval_retrieval_fr"} <= set(result.metrics)  # margin retrieval over all dev pairs
    assert result.metrics["eval_retrieval"] == result.metrics["eval_retrieval_fr"]  # one language: its own mean
    assert 0.0 <= result.metrics["eval_retrieval"] <= 1.0
    assert len(losses(tmp_path / "joint", "eval_task_loss")) == 3  # before training (step 0), steps 2 and 4
    assert len(losses(tmp_path / "joint", "eval_retrieval")) == 3


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model_dir, example_data, tmp_path):
    model_dir = tiny_model_dir("llama")
    settings = dict(model=str(model_dir), data=str(example_data["task"]), pairs=str(example_data["pairs"]), max_steps=8)
    settings_with_dropout = {**settings, "lora.dropout": 0.1}  # dropout draws random numbers: RNG state must resume too
    straight = train_adapter(recipe("joint", **settings_with_dropout), "task", tmp_path / "straight")
    assert straight.out is not None

    def press_ctrl_c(state) -> None:
        if state.step == 3:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "resumed"
    stopped = train_adapter(recipe("joint", **settings_with_dropout), "task", out, on_step=press_ctrl_c)
    assert stopped.out is None and stopped.state.step == 3 and not out.exists()
    assert (tmp_path / "resumed.run" / "checkpoints" / "checkpoint-3").is_dir()
    resumed = train_adapter(recipe("joint", **settings_with_dropout), "task", out, resume=True)
    assert resumed.state.step == 8
    expected, actual = adapter_tensors(tmp_path / "straight"), adapter_tensors(out)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(actual[key], expected[key], atol=1e-6), key


def test_bad_data_is_reported_with_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\nnot json\n')
    result = CliRunner().invoke(
        app, ["train-task", "--model", str(tiny_model_dir("llama")), "--data", str(bad), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and f"{bad}:2" in line and f"{bad}:3" in line
    assert not (tmp_path / "o").exists()


def test_cli_rejects_missing_inputs(tmp_path):
    result = CliRunner().invoke(app, ["train-align", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no model" in result.stderr and "--pairs" in result.stderr


def test_every_shipped_training_recipe_validates():
    from pathlib import Path

    recipes = [*sorted(Path("recipes").glob("paper/*-*.yaml")), *sorted(Path("recipes").glob("tiny/*.yaml"))]
    recipes += sorted(Path("recipes").glob("module/ref-*.yaml"))
    assert len(recipes) >= 11
    for path in recipes:
        if path.name != "paper-common.yaml":
            load_recipe(TrainRecipe, path)


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_model_dir, example_data, tmp_path):
    """torchrun with two gloo workers (2 x 2 examples) against one process with 4: gathered negatives,
    the global token mean and DDP's gradient average must give the same adapter."""
    import os
    import subprocess
    import sys

    common = [
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(example_data["task"]),
        "--pairs",
        str(example_data["pairs"]),
        "--recipe",
        TINY.format("joint"),
        "--max-steps",
        "6",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "loramerge",
            "train-task",
            *common,
            "--set",
            "batch_size=2",
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "loramerge", "train-task", *common, "--set", "batch_size=4", "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    expected, actual = adapter_tensors(tmp_path / "one"), adapter_tensors(tmp_path / "two")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(actual[key], expected[key], atol=1e-5), key
    assert two.stderr.count("adapter written to") == 1  # only the main process reports


def test_gradient_checkpointing_with_joint_training(tiny_model_dir, example_data, tmp_path):
    settings = recipe(
        "joint",
        model=str(tiny_model_dir("gemma3")),
        data=str(example_data["task"]),
        pairs=str(example_data["pairs"]),
        gradient_checkpointing=True,
        max_steps=4,
    )
    result = train_adapter(settings, "task", tmp_path / "joint")
    assert result.out is not None and {"task_loss", "align_loss"} <= set(result.metrics)
    # Checkpointing recomputes activations instead of storing them: the same losses and the same trained factors.
    settings.gradient_checkpointing = False
    plain = train_adapter(settings, "task", tmp_path / "plain")
    for key in ("task_loss", "align_loss"):
        assert losses(tmp_path / "joint", key) == pytest.approx(losses(tmp_path / "plain", key), rel=1e-5), key
    checkpointed, reference = adapter_tensors(tmp_path / "joint"), adapter_tensors(plain.out)
    assert checkpointed.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(checkpointed[key], reference[key], rtol=1e-4, atol=1e-6), key


def test_cli_layer_flag(tiny_model_dir, example_data, tmp_path):
    args = align_args(tiny_model_dir("qwen2"), example_data["pairs"])
    result = CliRunner().invoke(app, [*args, "--layer", "1", "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    assert adapter_layers(tmp_path / "one") == {0}
    assert "  layer: 1\n" in (tmp_path / "one" / "recipe.yaml").read_text()  # the resolved recipe records the flag
    too_deep = CliRunner().invoke(app, [*args, "--layer", "4", "--out", str(tmp_path / "deep")])
    assert too_deep.exit_code == 2 and "between 1 and 3" in too_deep.stderr


def test_layer_auto_picks_the_best_dev_retrieval_layer(tiny_model_dir, example_data, tmp_path):
    args = align_args(tiny_model_dir("llama"), example_data["pairs"], "--layer", "auto")
    missing = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "no-dev")])
    assert missing.exit_code == 2 and "eval_pairs" in missing.stderr
    result = CliRunner().invoke(app, [*args, "--set", f"eval_pairs={example_data['dev_pairs']}", "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    import yaml

    chosen = yaml.safe_load((tmp_path / "auto" / "recipe.yaml").read_text())["align"]["layer"]
    assert adapter_layers(tmp_path / "auto") == set(range(chosen))
    # The layer with the best dev retrieval, as `loramerge probe` measures it on the same sentences and pooling:
    # the best margin accuracy among block outputs 1..L-1 (the earliest on a tie).
    probed = CliRunner().invoke(
        app,
        [
            "probe",
            "--model",
            str(tiny_model_dir("llama")),
            "--pairs",
            str(example_data["dev_pairs"]),
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert probed.exit_code == 0, probed.output
    layers = json.loads((tmp_path / "p" / "probe.json").read_text())["variants"]["base"]["layers"]
    margin = {int(k): v["average"]["margin"] for k, v in layers.items() if 1 <= int(k) <= 3}
    assert len(set(margin.values())) > 1  # the layers differ, so the choice is not decided by the tie rule alone
    assert chosen == max(sorted(margin), key=lambda k: margin[k])


def test_an_unfinished_run_is_not_silently_mixed_into_a_new_one(tiny_model_dir, example_data, tmp_path):
    out = tmp_path / "align"
    (tmp_path / "align.run" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "align.run" / "metrics.jsonl").write_text('{"step": 99}\n')
    args = align_args(tiny_model_dir("llama"), example_data["pairs"], "--out", str(out))
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert '"step": 99' not in (out / "metrics.jsonl").read_text()


def test_a_run_killed_before_its_first_checkpoint_sends_both_commands_the_same_way(tiny_model_dir, example_data, tmp_path):
    """Nothing to resume: --resume says to rerun without it, and that plain rerun starts over (it used to ask for
    --resume or --overwrite, sending the user in a circle)."""
    out = tmp_path / "align"
    (tmp_path / "align.run" / "checkpoints" / ".checkpoint-2.partial").mkdir(parents=True)
    (tmp_path / "align.run" / "metrics.jsonl").write_text('{"step": 1}\n')
    args = align_args(tiny_model_dir("llama"), example_data["pairs"], "--out", str(out))
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 2
    assert "no checkpoint to resume" in resumed.stderr and "rerun without --resume" in resumed.stderr
    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.stderr
    assert "nothing to resume" in rerun.stderr
    assert (out / "adapter_model.safetensors").is_file() and not (tmp_path / "align.run").exists()


def test_an_rslora_adapter_comes_with_the_export_command_that_servers_need(tiny_model_dir, example_data, tmp_path):
    out = tmp_path / "rs"
    args = align_args(tiny_model_dir("llama"), example_data["pairs"], "--set", "lora.use_rslora=true", "--out", str(out))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"loramerge export {out} --out {out}-portable" in result.stderr  # on one line, whatever the width
    plain = CliRunner().invoke(app, align_args(tiny_model_dir("llama"), example_data["pairs"], "--out", str(tmp_path / "plain")))
    assert plain.exit_code == 0 and "rsLoRA" not in plain.stderr


def test_a_constant_objective_is_refused_or_warned_from_the_observed_gradient(tiny_model_dir, example_data, tmp_path):
    """align.temperature=inf is no number a recipe takes; 1e30 is one, but every pair then scores alike and the
    first step's gradient is zero: the run says so instead of writing an adapter that does nothing in silence."""
    args = align_args(tiny_model_dir("llama"), example_data["pairs"])
    infinite = CliRunner().invoke(app, [*args, "--set", "align.temperature=.inf", "--out", str(tmp_path / "inf")])
    assert infinite.exit_code == 2 and "finite number" in infinite.stderr and not (tmp_path / "inf").exists()
    constant = CliRunner().invoke(app, [*args, "--set", "align.temperature=1e30", "--out", str(tmp_path / "flat")])
    assert constant.exit_code == 0, constant.output
    assert "warning: the first step's gradient is zero" in " ".join(constant.stderr.split())
    normal = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "normal")])
    assert normal.exit_code == 0 and "gradient is zero" not in normal.stderr
