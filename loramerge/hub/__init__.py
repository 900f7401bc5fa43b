"""Hugging Face Hub: adapters pulled by `org/name[@revision]`, finished folders pushed in one commit, both
retried as a whole on transient faults (`client`); the model cards every output carries (`card`).

May import: the shared core only.
"""
