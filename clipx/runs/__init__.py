"""Runs over whole datasets: the resumable, sharded runner under torchrun (`runner.py`), the item sources
it reads (`sources.py`: folders, `datasets`, WebDataset shards), and `explain_dataset`."""

from .runner import RunResult, init_distributed, run

__all__ = ["RunResult", "init_distributed", "run"]
