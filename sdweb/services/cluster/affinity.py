"""Which idle worker gets a job (model affinity), and how a job's batches are split across workers.

Pure functions over small views of the workers, so the rules are tested without Ray:

* a worker already holding the job's checkpoint comes first, then the one holding more of its
  LoRAs / VAE, then the least recently used (it is the one that loads the model);
* a worker known to lack the checkpoint file is never chosen for it;
* ``n_iter`` batches are split into contiguous ranges, as even as possible, the first ranges the longer:
  a range ``(start, count)`` is run as a request with ``seed + start * batch_size`` and ``n_iter=count``,
  which makes exactly the images a single worker would (A1111's seeds: batch image ``i`` uses seed + i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdweb.params import GenerationParams


@dataclass(frozen=True)
class SlotView:
    """What the choice needs to know about one idle worker."""

    id: str
    checkpoint: str | None  # sha256 (or title) of the checkpoint it holds
    vae: str | None
    loras: frozenset[str]
    last_used: float
    lacks: frozenset[str] = frozenset()  # checkpoints it said it does not have


@dataclass(frozen=True)
class Wanted:
    """The job's side: its checkpoint key (sha256 when known), VAE choice and LoRA names."""

    checkpoint: str | None
    vae: str | None = None
    loras: frozenset[str] = frozenset()


def rank_workers(idle: Sequence[SlotView], wanted: Wanted) -> list[SlotView]:
    """Idle workers that may run the job, best first (see the module docstring)."""
    usable = [slot for slot in idle if wanted.checkpoint is None or wanted.checkpoint not in slot.lacks]

    def key(slot: SlotView) -> tuple[int, int, float]:
        holds = wanted.checkpoint is not None and slot.checkpoint == wanted.checkpoint
        shared = len(wanted.loras & slot.loras) + (
            1 if wanted.vae is not None and slot.vae == wanted.vae else 0
        )
        return (0 if holds else 1, -shared, slot.last_used)

    return sorted(usable, key=key)


def split_iterations(n_iter: int, workers: int) -> list[tuple[int, int]]:
    """``n_iter`` batches as ``(start, count)`` ranges for at most ``workers`` workers, in order."""
    if n_iter < 1 or workers < 1:
        raise ValueError(f"n_iter and workers must be at least 1, got {n_iter} and {workers}")
    parts = min(n_iter, workers)
    base, extra = divmod(n_iter, parts)
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in range(parts):
        count = base + (1 if index < extra else 0)
        ranges.append((start, count))
        start += count
    return ranges


def part_params(params: GenerationParams, start: int, count: int) -> GenerationParams:
    """The request for batches ``start .. start + count - 1`` of ``params`` (seeds resolved)."""
    if params.seed < 0 or params.subseed < 0:
        raise ValueError("resolve the seeds (-1) before splitting a job")
    offset = start * params.batch_size
    return params.model_copy(
        update={"seed": params.seed + offset, "subseed": params.subseed + offset, "n_iter": count}
    )
