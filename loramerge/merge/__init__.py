"""Merging: PEFT LoRA adapters combined by weighted tensor arithmetic into one adapter, without a base model.

`engine.merge_adapters` reads each module's factors lazily (`inputs`), weighs them per source, layer and
module (`layer_weights`, `recipe`), combines them with a method from the registry (`methods`: each method's
function and facts, its output rank among them; exact `cat`, `svd` and the core-space methods through
`core_space` and `core_methods`, sparsifying ties/dare/magnitude; spectra and truncation in `lowrank`), lays the
output out (`plan`), streams it (`stream_writer`) and writes the folder (`outputs`: the PEFT config from
`peft_config`, `merge_report.json` from `report`, recipe and model card). `search` scores candidates
(`search_grid`, `method_grid`) on a dev set with the evaluator, keeps the best and writes its table
(`search_report`).

May import: the shared core (`loramerge.adapters`, `atomic`, `errors`, `hashing`, `recipes`, `parsing`),
`loramerge.hub`, `loramerge.data`, and `loramerge.evaluate` (only `search` does). Never `cli` or `demo`.
"""
