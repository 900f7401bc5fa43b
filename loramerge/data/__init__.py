"""Data: task records and sentence pairs read and checked (`records`), tokenized with loss masks and prompts and
collated into batches (`tokenization`), and the data sets built from this machine's files: English -> X pairs
from the gettext catalogs (`corpora`, reading .mo files with `mo_files`), the demo's cross-lingual iso-codes
task (`isocodes`) and the topic task built for skill transfer (`topics`); `summaries` renders what was built
as tables.

May import: the shared core only (`loramerge.errors`, `atomic`, `parsing`, ...).
"""
