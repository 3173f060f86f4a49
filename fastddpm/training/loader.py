"""Reading a streamed data source ahead of the train step, in worker processes.

A step's batch is a pure function of (config, step, rank) (trainer.py), so the loader knows
every future batch: it hands steps s, s+1, ... to `workers` processes (torch's DataLoader,
`prefetch` batches each in flight), which decode the images (sources.FolderSource.read) into
uint8 batches, pinned when the trainer is on a GPU. `get(step, idx)` returns step's batch,
checking that it holds exactly `idx`; asked for a step out of order (a resume, a second
fit()), it restarts at that step. Order and flips never depend on the workers: `--workers`
changes the speed only.
"""

import os

import torch


class _Batches(torch.utils.data.Dataset):
    def __init__(self, source):
        self.source = source

    def __getitem__(self, item):
        step, idx = item
        return step, idx, self.source.read(idx)

    def __len__(self):
        return len(self.source)


class _Steps(torch.utils.data.Sampler):
    """(step, indices) for step = start, start + 1, ... without end: the trainer stops asking."""

    def __init__(self, indices, start: int):
        self.indices, self.start = indices, start

    def __iter__(self):
        s = self.start
        while True:
            yield s, self.indices(s)
            s += 1


class StepLoader:
    def __init__(self, source, indices, workers=None, pin: bool = False, prefetch: int = 2):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"workers: expected None or an int >= 0 (0: read in the training process), got {workers!r}")
        self.source, self.indices, self.pin, self.prefetch = source, indices, pin, prefetch
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self._it, self._next = None, None

    def _start(self, step: int) -> None:
        self.close()
        dl = torch.utils.data.DataLoader(_Batches(self.source), batch_size=None, sampler=_Steps(self.indices, step),
                                         num_workers=self.workers, pin_memory=self.pin,
                                         prefetch_factor=self.prefetch if self.workers else None)
        self._it, self._next = iter(dl), step

    def get(self, step: int, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S): the images of `idx`, the batch of `step`."""
        if self._it is None or self._next != step:
            self._start(step)
        s, got, x = next(self._it)
        if s != step or not torch.equal(got, idx.cpu()):
            raise RuntimeError(f"loader: read step {s} for step {step}: the batch's addresses are not a pure function of "
                               f"the step (a bug: please report it)")
        self._next = step + 1
        return x

    def close(self) -> None:
        """Stop the workers (a later get() starts them again where it is asked)."""
        it, self._it, self._next = self._it, None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        del it
