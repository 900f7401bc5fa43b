"""Merging: PEFT LoRA adapters combined by weighted tensor arithmetic into one adapter, without a base model.

`engine.merge_adapters` reads each module's factors lazily (`inputs`), weighs them per source, layer and
module (`layer_weights`, `recipe`), combines them with a method from the registry (`methods`; exact `cat`,
QR-core `svd` in `lowrank`, sparsifying ties/dare/magnitude), streams the output (`stream_writer`), and
writes the PEFT config (`peft_config`), `merge_report.json` (`report`) and the model card. `search` scores
candidate weights on a dev set with the evaluator and keeps the best.

May import: the shared core (`loramerge.adapters`, `atomic`, `errors`, `hashing`, `recipes`, `parsing`),
`loramerge.hub`, `loramerge.data`, and `loramerge.evaluate` (only `search` does). Never `cli` or `demo`.
"""
