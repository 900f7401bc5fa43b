"""Tiny random models and adapters built from configs: for tests, the benchmark and the merge example.

Nothing is downloaded: the model is built from a config with a fixed seed and saved locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from loramerge.train.recipe import ALL_LINEAR  # noqa: F401  (re-exported for the demo, tests and benchmarks)

# Small enough that a forward pass takes milliseconds on a CPU, big enough to have GQA
# (4 query heads, 2 key/value heads) so q/k/v shapes differ like in real models.
TINY_LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def save_tiny_llama(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    model.save_pretrained(folder)
    return folder


def load_model(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def randomize_trainable(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """LoRA's B starts at zero and modules_to_save start as copies of the base: give every trainable
    tensor random values, as training would, so each adapter's update is non-zero and distinct."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def make_random_adapter(base_folder: Path, out: Path, seed: int, **lora_options: Any) -> Path:
    """A PEFT LoRA adapter made by PEFT itself, with random non-zero factors."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(base_folder), LoraConfig(**lora_options))
    randomize_trainable(model, seed)
    model.save_pretrained(out)
    return out


# A few translation pairs for tokenizer training and smoke runs (written for this project).
EXAMPLE_PAIRS = [
    ("The file could not be opened.", "Le fichier n'a pas pu être ouvert."),
    ("Save the document before closing.", "Enregistrez le document avant de fermer."),
    ("The network connection was lost.", "La connexion réseau a été perdue."),
    ("Do you want to delete this folder?", "Voulez-vous supprimer ce dossier ?"),
    ("The printer is out of paper.", "L'imprimante n'a plus de papier."),
    ("Your password has expired.", "Votre mot de passe a expiré."),
    ("Select a language for the interface.", "Choisissez une langue pour l'interface."),
    ("The update was installed successfully.", "La mise à jour a été installée avec succès."),
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def save_tiny_tokenizer(folder: Path, vocab_size: int = 320) -> Path:
    """A byte-level BPE tokenizer trained offline on EXAMPLE_PAIRS (256 byte symbols + merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text for pair in EXAMPLE_PAIRS for text in pair] * 10, trainer)
    bos = tokenizer.token_to_id("<s>")
    # Like Llama: every sequence starts with BOS, so mean pooling meets the same first-token effect.
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    wrapped.save_pretrained(folder)
    return folder


def save_tiny_llama_with_tokenizer(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """A complete local model folder (config, weights, tokenizer) that train-align/train-task accept."""
    save_tiny_tokenizer(folder)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(folder))
    tokens = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return save_tiny_llama(folder, seed, **{"vocab_size": vocab, **tokens, **overrides})
