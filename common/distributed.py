"""Which process this is, under ``accelerate launch`` / torchrun, without a process group.

Training itself goes through Accelerate (:mod:`common.train`); what happens around it
(result rows, tiny-teacher bootstraps) needs two small facts that must hold before and after
any process group exists: is this the process that writes, and can a job run as a world of one.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch.distributed as dist

# what launchers export to tell a process its place in the world (torchrun, accelerate, MPI)
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def process_rank() -> int:
    """This process's global rank: the process group's, else the launcher's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True for the one process that writes shared files (result rows); rank 0."""
    return process_rank() == 0


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Run the block as a world of one: the launcher's variables are hidden, so an
    ``Accelerator`` created inside trains on this process alone.

    Used for a tiny teacher's bootstrap under a multi-process launch: whichever rank takes
    the cache lock trains it alone while the others wait on the lock. Were the bootstrap
    distributed, its process-group setup would wait for ranks that are themselves waiting on
    the lock (a deadlock)."""
    saved = {k: os.environ.pop(k) for k in LAUNCHER_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
