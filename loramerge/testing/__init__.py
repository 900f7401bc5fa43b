"""Test and benchmark support shipped with the package: tiny random models, tokenizers and adapters built
from configs without any download (`tiny`), and PEFT used as the oracle of what an adapter does (`verify`).

May import: the shared core and `loramerge.train` (the LoRA target list). The library never imports it.
"""
