"""Data: task records and sentence pairs read and checked (`records`), tokenized with loss masks and prompts
(`tokenization`), and the data sets built from this machine's files: English -> X pairs from the gettext
catalogs (`corpora`) and the demo's cross-lingual iso-codes task (`isocodes`); `summaries` renders what was
built as tables.

May import: the shared core only (`loramerge.errors`, `atomic`, `parsing`, ...).
"""
