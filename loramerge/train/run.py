"""train-align and train-task: load model and data, attach LoRA, run the shared loop, write the adapter.

Layout while training: `<out>.run/` holds checkpoints and metrics.jsonl; `--resume` continues from its
latest checkpoint. The finished adapter is staged and renamed to `<out>` only when complete; the run
folder is then removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin, set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase, get_scheduler

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.data.records import (
    SentencePair,
    TaskRecord,
    collate_pairs,
    collate_task,
    read_pairs_file,
    read_task_file,
    tokenize_sentences,
)
from loramerge.data.tokenization import tokenize_task
from loramerge.errors import LoramergeError, ProblemList
from loramerge.evaluate.probe import best_layer
from loramerge.faults import crash_point
from loramerge.hub.card import TrainingSummary, render_training_card
from loramerge.models.layer_exit import default_layer, num_decoder_layers
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec, source_commit
from loramerge.output_lock import is_launch_main, notice, output_lock
from loramerge.recipes import dump_recipe
from loramerge.train.batches import BatchStream
from loramerge.train.checkpoints import (
    clean_checkpoint_leftovers,
    gathered_trainable_tensors,
    latest_checkpoint,
    read_checkpoint,
)
from loramerge.train.eval_loss import PairEval, batches, make_evaluator
from loramerge.train.log import MetricsLog, truncate_metrics
from loramerge.train.loop import LoopSettings, LoopState, StepCallback, is_sharded, run_loop
from loramerge.train.objectives import ALIGN, TASK, ObjectiveModel
from loramerge.train.recipe import TrainRecipe

Mode = Literal["align", "task"]
SCHEDULES = {"linear": "linear", "cosine": "cosine", "inverse_sqrt": "inverse_sqrt", "constant": "constant_with_warmup"}


@dataclass
class TrainResult:
    out: Path | None  # None when interrupted: the checkpoint in run_dir resumes it
    run_dir: Path
    state: LoopState
    metrics: dict[str, float]
    is_main: bool = True  # under data parallelism only the main process reports
    align_layer: int | None = None  # hidden_states index the alignment loss used (None: task only)


def run_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".run")


def check_inputs(recipe: TrainRecipe, mode: Mode, out: Path, overwrite: bool, resume: bool) -> None:
    problems = ProblemList()
    if recipe.model is None:
        problems.add("no model: pass --model (a local folder or org/name[@revision])")
    if mode == "align" and recipe.pairs is None:
        problems.add("train-align needs parallel sentences: pass --pairs FILE (JSONL or TSV)")
    if mode == "task" and recipe.data is None:
        problems.add("train-task needs task data: pass --data FILE (JSONL)")
    if (problem := output_dir_problem(out, overwrite)) is not None:
        problems.add(problem)
    run_dir = run_dir_for(out)
    if is_launch_main():  # one process repairs; the others of a launch only read
        for note in clean_checkpoint_leftovers(run_dir / "checkpoints"):
            notice(note)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if resume and checkpoint is None:
        problems.add(
            f"--resume: {run_dir} holds no checkpoint to resume (the run stopped before its first); rerun without --resume"
        )
    if not resume and checkpoint is not None and not overwrite:
        problems.add(
            f"{run_dir} holds an unfinished run ({checkpoint.name}); add --resume to continue it or --overwrite to start over"
        )
    problems.raise_if_any()
    if not resume and run_dir.exists():
        if checkpoint is None:
            notice(f"removed {run_dir}: a run that stopped before its first checkpoint, nothing to resume")
        # the old run's checkpoints and metrics would mix with the new
        shutil.rmtree(run_dir, ignore_errors=True)


def language_rows(records: list[TaskRecord] | None, pairs: list[SentencePair] | None) -> list[tuple[str, str, int]]:
    rows = []
    if records:
        rows += [("task", lang or "unknown", n) for lang, n in sorted(Counter(r.lang for r in records).items(), key=str)]
    if pairs:
        directions = Counter(f"{p.source_lang or '?'}-{p.target_lang or '?'}" for p in pairs)
        rows += [("pairs", direction, n) for direction, n in sorted(directions.items())]
    return rows


def languages_of(records: list[TaskRecord] | None, pairs: list[SentencePair] | None) -> list[str]:
    found = {r.lang for r in records or []} | {p.source_lang for p in pairs or []} | {p.target_lang for p in pairs or []}
    return sorted(lang for lang in found if lang)


def lora_config(recipe: TrainRecipe, align_only_below: int | None) -> LoraConfig:
    # train-align: blocks at and above k get no gradient, so LoRA there would be stored as random A with
    # zero B; they are not created at all.
    layers = list(range(align_only_below)) if align_only_below is not None else None
    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        use_rslora=recipe.lora.use_rslora,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def pair_batch_size(recipe: TrainRecipe) -> int:
    return recipe.align.batch_size or recipe.batch_size


def tokenized_pairs(
    path: str, tokenizer: PreTrainedTokenizerBase, recipe: TrainRecipe
) -> tuple[list[SentencePair], list[list[int]], list[list[int]]]:
    """The pairs of a file with their source and target token ids (raw sentences, align.max_length)."""
    pairs = read_pairs_file(Path(path))
    limit = recipe.align.max_length
    sources = tokenize_sentences([p.source for p in pairs], tokenizer, limit)
    return pairs, sources, tokenize_sentences([p.target for p in pairs], tokenizer, limit)


def build_streams(
    recipe: TrainRecipe, mode: Mode, tokenizer: PreTrainedTokenizerBase, num_processes: int = 1, process_index: int = 0
) -> tuple[dict[str, BatchStream], list[TaskRecord] | None, list[SentencePair] | None]:
    pad = tokenizer.pad_token_id
    shard = {"num_processes": num_processes, "process_index": process_index}
    streams: dict[str, BatchStream] = {}
    records = pairs = None
    if mode == "task":
        records = read_task_file(Path(recipe.data))
        examples = tokenize_task(records, tokenizer, recipe.max_length)
        streams[TASK] = BatchStream(
            recipe.data, examples, recipe.batch_size, lambda b: collate_task(b, pad), recipe.seed, **shard
        )
    if recipe.pairs is not None and (mode == "align" or recipe.task_per_align[1] > 0):
        pairs, sources, targets = tokenized_pairs(recipe.pairs, tokenizer, recipe)
        tokenized = list(zip(sources, targets))
        size = pair_batch_size(recipe)
        if size < 2:
            raise LoramergeError("alignment needs at least 2 pairs per micro-batch (in-batch negatives); raise align.batch_size")

        def collate(items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
            return collate_pairs([s for s, _ in items], [t for _, t in items], pad)

        streams[ALIGN] = BatchStream(recipe.pairs, tokenized, size, collate, recipe.seed + 1, **shard)
    return streams, records, pairs


def eval_batches(
    recipe: TrainRecipe, tokenizer: PreTrainedTokenizerBase, with_task: bool, with_pairs: bool
) -> tuple[list[dict[str, torch.Tensor]] | None, PairEval | None]:
    pad = tokenizer.pad_token_id
    task = pairs = None
    if with_task and recipe.eval_data is not None:
        examples = tokenize_task(read_task_file(Path(recipe.eval_data)), tokenizer, recipe.max_length)
        task = [collate_task(chunk, pad) for chunk in batches(examples, recipe.batch_size)]
    if with_pairs and recipe.eval_pairs is not None:
        held_out, sources, targets = tokenized_pairs(recipe.eval_pairs, tokenizer, recipe)
        size = pair_batch_size(recipe)
        pairs = PairEval(
            batches=[collate_pairs(s, t, pad) for s, t in zip(batches(sources, size), batches(targets, size))],
            languages=[pair.target_lang or "target" for pair in held_out],
        )
    return task, pairs


def objective_cycle(recipe: TrainRecipe, streams: dict[str, BatchStream]) -> list[str]:
    if TASK not in streams:
        return [ALIGN]
    if ALIGN not in streams:
        return [TASK]
    task_count, align_count = recipe.task_per_align
    return [TASK] * task_count + [ALIGN] * align_count


def total_steps(recipe: TrainRecipe, streams: dict[str, BatchStream], cycle: list[str]) -> int:
    """Epochs count passes over the main data set: the task data, or the pairs for train-align."""
    if recipe.max_steps is not None:
        return recipe.max_steps
    main = TASK if TASK in streams else ALIGN
    micro_batches = recipe.epochs * streams[main].batches_per_epoch * len(cycle) / cycle.count(main)
    return max(1, math.ceil(micro_batches / recipe.grad_accum))


def choose_layer(recipe: TrainRecipe, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, layers: int) -> int:
    """The alignment layer: as given, round(L/2), or (auto) the best retrieval layer on eval_pairs.

    The choice is written back into the recipe, so recipe.yaml and the card record the number used.
    """
    if recipe.align.layer == "auto":
        if recipe.eval_pairs is None:
            raise LoramergeError(
                "--layer auto picks the layer with the best retrieval on a dev split: set eval_pairs "
                "(e.g. --set eval_pairs=pairs-dev.jsonl from 'loramerge data gettext')"
            )
        chosen, _ = best_layer(model, tokenizer, read_pairs_file(Path(recipe.eval_pairs)), recipe.align.skip_first_token)
        recipe.align.layer = chosen
    elif recipe.align.layer is None:
        recipe.align.layer = default_layer(layers)
    return recipe.align.layer


def make_accelerator(recipe: TrainRecipe, joint: bool) -> Accelerator:
    # Joint training leaves the LoRA above layer k without gradient in alignment steps; DDP must be told.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=joint)]
    # accelerate only recognises torchrun/accelerate-launch CPU workers (gloo) when told it runs on CPU.
    cpu = not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=recipe.precision, kwargs_handlers=handlers, step_scheduler_with_optimizer=False, cpu=cpu
    )
    if cpu and fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        shard_on_cpu(accelerator)
    return accelerator


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config (distributed_type: FSDP) says so through the environment."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard_on_cpu(accelerator: Accelerator) -> None:
    """Turn a CPU (gloo) launch that asked for FSDP into FSDP, as accelerate does for GPUs.

    accelerate 1.15 switches only GPU-like process groups to FSDP (AcceleratorState leaves MULTI_CPU alone), so
    a CPU launch with an FSDP config would silently train with DDP. FSDP itself (fully_shard, FSDP2) runs on CPU
    with gloo; switching the state here makes accelerate's own FSDP preparation run, the same code as on GPUs.
    """
    state = accelerator.state
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* environment
    if state.mixed_precision != "no":
        state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what AcceleratorState does on GPUs


def objective_module(peft_model: PeftModel, align_layer: int | None, recipe: TrainRecipe) -> ObjectiveModel:
    objective = ObjectiveModel(peft_model, align_layer, recipe.align, split_by_length=recipe.split_by_length)
    # FSDP's transformer wrap policy reads the block classes from the wrapped model's _no_split_modules; without
    # them the whole model would be one FSDP unit, gathered in full for every forward.
    objective._no_split_modules = list(getattr(peft_model.get_base_model(), "_no_split_modules", None) or [])
    return objective


def final_adapter_weights(accelerator: Accelerator, objective_model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """FSDP: the gathered LoRA tensors, named as in the PEFT model, for save_pretrained (which would otherwise
    write this process's shards). Every process must call it; None without FSDP (PEFT reads its own model)."""
    if not is_sharded(accelerator):
        return None
    prefix = "model."  # ObjectiveModel holds the PEFT model as .model
    return {name.removeprefix(prefix): tensor for name, tensor in gathered_trainable_tensors(objective_model).items()}


def train_adapter(
    recipe: TrainRecipe,
    mode: Mode,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_step: StepCallback | None = None,
) -> TrainResult:
    with output_lock(out):
        check_inputs(recipe, mode, out, overwrite, resume)
        joint = mode == "task" and recipe.pairs is not None and recipe.task_per_align[1] > 0
        accelerator = make_accelerator(recipe, joint)
        set_seed(recipe.seed)
        source = parse_model_spec(recipe.model)
        tokenizer = load_tokenizer(source)
        streams, records, pairs = build_streams(recipe, mode, tokenizer, accelerator.num_processes, accelerator.process_index)
        eval_task, eval_pairs = eval_batches(recipe, tokenizer, TASK in streams, ALIGN in streams)
        model = load_causal_lm(source)
        layers = num_decoder_layers(model)
        align_layer = choose_layer(recipe, model, tokenizer, layers) if ALIGN in streams else None
        if align_layer is not None and not 1 <= align_layer < layers:
            raise LoramergeError(f"align.layer {align_layer} must be between 1 and {layers - 1} for a model with {layers} layers")
        peft_model = get_peft_model(model, lora_config(recipe, align_layer if mode == "align" else None))
        if recipe.gradient_checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable; non-reentrant checkpointing lets the
            # alignment step's early exit unwind through checkpointed blocks
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            peft_model.enable_input_require_grads()
        cycle = objective_cycle(recipe, streams)
        steps = total_steps(recipe, streams, cycle)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=recipe.optimizer.learning_rate, weight_decay=recipe.optimizer.weight_decay)
        warmup = math.ceil(recipe.optimizer.warmup_ratio * steps)
        scheduler = get_scheduler(
            SCHEDULES[recipe.optimizer.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=steps
        )
        objective_model, optimizer = accelerator.prepare(objective_module(peft_model, align_layer, recipe), optimizer)
        run_dir = run_dir_for(out)
        state = LoopState()
        if resume:
            saved = read_checkpoint(
                latest_checkpoint(run_dir / "checkpoints"),
                objective_model if is_sharded(accelerator) else accelerator.unwrap_model(objective_model),
                optimizer,
                scheduler,
                accelerator.process_index,
                sharded=is_sharded(accelerator),
            )
            state = LoopState(**saved["loop"])
            if accelerator.is_main_process:  # rows logged after this checkpoint will be logged again
                truncate_metrics(run_dir / "metrics.jsonl", state.step)
            for name, position in saved["streams"].items():
                streams[name].load_state_dict(position)
        settings = LoopSettings(
            total_steps=steps,
            grad_accum=recipe.grad_accum,
            cycle=cycle,
            max_grad_norm=recipe.optimizer.max_grad_norm,
            log_every=recipe.log_every,
            eval_every=recipe.eval_every,
            save_every=recipe.save_every,
            checkpoint_dir=run_dir / "checkpoints",
        )
        log = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process, run_dir / "tensorboard")
        evaluate = make_evaluator(accelerator.unwrap_model(objective_model), accelerator.device, eval_task, eval_pairs)
        try:
            state = run_loop(accelerator, objective_model, optimizer, scheduler, streams, settings, state, log, evaluate, on_step)
            if state.interrupted:
                return TrainResult(
                    out=None, run_dir=run_dir, state=state, metrics=state.last_losses, is_main=accelerator.is_main_process
                )
            final_metrics = {**state.last_losses, **(evaluate() if evaluate is not None else {})}
            log.write({"step": state.step, "final": True, **final_metrics})
        finally:
            log.close()
        adapter_weights = final_adapter_weights(accelerator, objective_model)
        if accelerator.is_main_process:
            summary = TrainingSummary(
                kind={"align": "alignment", "task": "joint task + alignment" if joint else "task"}[mode],
                data_rows=language_rows(records, pairs),
                hyperparameters=hyperparameters(recipe, align_layer, steps, accelerator.num_processes),
                final_metrics=final_metrics,
                base_commit=source_commit(source),
            )
            write_outputs(peft_model, recipe, summary, out, run_dir, languages_of(records, pairs), adapter_weights)
        accelerator.wait_for_everyone()
        return TrainResult(
            out=out,
            run_dir=run_dir,
            state=state,
            metrics=final_metrics,
            is_main=accelerator.is_main_process,
            align_layer=align_layer,
        )


def shutdown_distributed() -> None:
    """End a torchrun/accelerate-launch worker cleanly: without a final barrier, gloo can abort a worker
    (SIGABRT) whose peer has already torn the group down."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()


def hyperparameters(recipe: TrainRecipe, align_layer: int | None, steps: int, processes: int) -> dict[str, str]:
    values: dict[str, Any] = {
        "LoRA r / alpha / dropout": f"{recipe.lora.r} / {recipe.lora.alpha:g} / {recipe.lora.dropout:g}",
        "target modules": ", ".join(recipe.lora.target_modules),
        "optimizer steps": steps,
        "micro-batch x accumulation x processes": f"{recipe.batch_size} x {recipe.grad_accum} x {processes}",
        "learning rate / schedule": f"{recipe.optimizer.learning_rate:g} / {recipe.optimizer.schedule}",
        "precision": recipe.precision,
        "seed": recipe.seed,
    }
    if align_layer is not None:
        values["alignment layer (hidden_states index)"] = align_layer
        values["temperature / symmetric / skip first token"] = (
            f"{recipe.align.temperature:g} / {recipe.align.symmetric} / {recipe.align.skip_first_token}"
        )
    return {key: str(value) for key, value in values.items()}


def write_outputs(
    peft_model: PeftModel,
    recipe: TrainRecipe,
    summary: TrainingSummary,
    out: Path,
    run_dir: Path,
    languages: list[str],
    adapter_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """adapter_weights: the gathered LoRA tensors of a sharded (FSDP) model; None: PEFT reads them from its model."""
    recipe_yaml = dump_recipe(recipe)
    base_model = peft_model.peft_config["default"].base_model_name_or_path
    with atomic_directory(out) as staging:
        peft_model.save_pretrained(staging, state_dict=adapter_weights)
        crash_point("train:final-write")
        (staging / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (staging / "README.md").write_text(render_training_card(summary, recipe_yaml, base_model, languages), encoding="utf-8")
        if (run_dir / "metrics.jsonl").exists():
            shutil.copy2(run_dir / "metrics.jsonl", staging / "metrics.jsonl")
        (staging / "train_summary.json").write_text(
            json.dumps(
                {"final": summary.final_metrics, "base_model": {"name": base_model, "commit": summary.base_commit}}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
    shutil.rmtree(run_dir, ignore_errors=True)
