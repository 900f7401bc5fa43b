"""train-align and train-task, read top to bottom: check the inputs, build the data streams and the model with
LoRA, run the shared loop (resuming from a checkpoint if asked), write the adapter.

Layout while training: `<out>.run/` holds checkpoints and metrics.jsonl; `--resume` continues from its
latest checkpoint. The finished adapter is staged and renamed to `<out>` only when complete; the run
folder is then removed (`outputs`). Data streams live in `streams`, accelerate plumbing in `distributed`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from loramerge.atomic import output_dir_problem
from loramerge.data.records import read_pairs_file
from loramerge.errors import LoramergeError, ProblemList
from loramerge.evaluate.probe import best_layer
from loramerge.hub.card import TrainingSummary
from loramerge.models.layer_exit import default_layer, num_decoder_layers
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec, source_commit
from loramerge.output_lock import is_launch_main, notice, output_lock
from loramerge.train.batches import BatchStream
from loramerge.train.checkpoints import clean_checkpoint_leftovers, latest_checkpoint, read_checkpoint
from loramerge.train.distributed import final_adapter_weights, make_accelerator, shutdown_distributed
from loramerge.train.eval_loss import make_evaluator
from loramerge.train.log import MetricsLog, truncate_metrics
from loramerge.train.loop import LoopSettings, LoopState, StepCallback, is_sharded, run_loop
from loramerge.train.memory import compact_frozen_vocabulary, release_to_os
from loramerge.train.objectives import ALIGN, TASK, ObjectiveModel
from loramerge.train.outputs import hyperparameters, write_outputs
from loramerge.train.recipe import Mode, TrainRecipe
from loramerge.train.streams import build_streams, eval_batches, language_rows, languages_of, objective_cycle, total_steps

__all__ = ["Mode", "TrainResult", "lora_config", "shutdown_distributed", "train_adapter"]
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


def objective_module(peft_model: PeftModel, align_layer: int | None, recipe: TrainRecipe) -> ObjectiveModel:
    objective = ObjectiveModel(peft_model, align_layer, recipe.align, split_by_length=recipe.split_by_length)
    # FSDP's transformer wrap policy reads the block classes from the wrapped model's _no_split_modules; without
    # them the whole model would be one FSDP unit, gathered in full for every forward.
    objective._no_split_modules = list(getattr(peft_model.get_base_model(), "_no_split_modules", None) or [])
    return objective


def enable_gradient_checkpointing(model: PreTrainedModel, peft_model: PeftModel) -> None:
    # transformers 5 renamed gradient_checkpointing_enable; non-reentrant checkpointing lets the
    # alignment step's early exit unwind through checkpointed blocks
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()


def resume_state(
    run_dir: Path,
    accelerator: Accelerator,
    objective_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    streams: dict[str, BatchStream],
) -> LoopState:
    """Load the latest checkpoint into the model, optimizer, scheduler and streams; the loop state to go on from."""
    sharded = is_sharded(accelerator)
    saved = read_checkpoint(
        latest_checkpoint(run_dir / "checkpoints"),
        objective_model if sharded else accelerator.unwrap_model(objective_model),
        optimizer,
        scheduler,
        accelerator.process_index,
        sharded=sharded,
    )
    state = LoopState(**saved["loop"])
    if accelerator.is_main_process:  # rows logged after this checkpoint will be logged again
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    for name, position in saved["streams"].items():
        streams[name].load_state_dict(position)
    return state


def loop_settings(recipe: TrainRecipe, steps: int, cycle: list[str], run_dir: Path) -> LoopSettings:
    return LoopSettings(
        total_steps=steps,
        grad_accum=recipe.grad_accum,
        cycle=cycle,
        max_grad_norm=recipe.optimizer.max_grad_norm,
        log_every=recipe.log_every,
        eval_every=recipe.eval_every,
        save_every=recipe.save_every,
        checkpoint_dir=run_dir / "checkpoints",
    )


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
        del tokenizer  # every batch is built: ~320 MB for Gemma-3's vocabulary, returned before training's peak
        release_to_os()
        peft_model = get_peft_model(model, lora_config(recipe, align_layer if mode == "align" else None))
        if recipe.compact_vocabulary and accelerator.device.type == "cpu" and accelerator.num_processes == 1:
            compact_frozen_vocabulary(peft_model.get_base_model())  # before checkpointing hooks the embedding
        if recipe.gradient_checkpointing:
            enable_gradient_checkpointing(model, peft_model)

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
            state = resume_state(run_dir, accelerator, objective_model, optimizer, scheduler, streams)
        log = MetricsLog(run_dir / "metrics.jsonl", accelerator.is_main_process, run_dir / "tensorboard")
        evaluate = make_evaluator(accelerator.unwrap_model(objective_model), accelerator.device, eval_task, eval_pairs)
        try:
            settings = loop_settings(recipe, steps, cycle, run_dir)
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
                hyperparameters=hyperparameters(
                    recipe, align_layer, steps, accelerator.num_processes, accelerator.mixed_precision
                ),
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
