"""Training: the one loop behind `train-align` and `train-task`.

`run.train_adapter` builds the model with LoRA, the data streams (`batches`), the objectives (`objectives`,
`losses`: task SFT loss, InfoNCE on mean-pooled middle-layer states) and hands them to `loop`, which owns
accelerate, the optimizer, checkpoints (`checkpoints`), metrics (`log`) and eval losses (`eval_loss`).
`recipe` holds the pydantic schema of a training recipe.

May import: the shared core, `loramerge.data`, `loramerge.models`, `loramerge.hub` (model cards) and
`loramerge.evaluate` (the retrieval probe for `--layer auto`). Never `merge`, `cli` or `demo`.
"""
