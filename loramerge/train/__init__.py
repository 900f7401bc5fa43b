"""Training: the one run behind `train-align` and `train-task`.

`run.train_adapter` reads as the recipe: check inputs, build the data (`streams`: task records and sentence
pairs as `batches`), the model with LoRA, the optimizer and the Accelerator (`distributed`), then hand them to
`loop`, which runs the steps of the objectives (`objectives`, `losses`: task SFT loss, InfoNCE on mean-pooled
middle-layer states), saves checkpoints (`checkpoints`), logs metrics (`log`) and eval losses (`eval_loss`);
`outputs` writes the adapter folder. `recipe` holds the pydantic schema of a training recipe.

May import: the shared core, `loramerge.data`, `loramerge.models`, `loramerge.hub` (model cards) and
`loramerge.evaluate` (the retrieval probe for `--layer auto`). Never `merge`, `cli` or `demo`.
"""
