"""GPT pretraining benchmark for bilevel autoresearch.

Pure PyTorch, no Django. Importing this package (or ``trainer.schema`` / ``trainer.launch``)
does not import torch, so a web process can validate configs and launch training
subprocesses without loading torch itself.
"""
