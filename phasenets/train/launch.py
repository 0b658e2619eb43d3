"""``phasenets train --nproc N``: start N training processes on this machine and wait for them.

The processes are started by torch's elastic launcher (what ``torchrun --standalone`` uses), so a
run started here behaves like one started with ``torchrun --nproc_per_node N -m phasenets
train``: each process reads its rank from the environment, and when one of them fails the
launcher stops the others and the command exits non-zero. Several machines need torchrun's
rendezvous instead (docs/guide-distributed.md).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from phasenets.config import ConfigError, TrainConfig

__all__ = ["inside_launcher", "launch_training"]

log = logging.getLogger("phasenets")


def inside_launcher() -> bool:
    """Whether this process was started by torchrun or ``launch_training`` (one rank of a job)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_training(config: TrainConfig) -> int:
    """Run ``config`` in ``config.nproc`` processes on this machine; returns the exit code.

    With CUDA, process ``i`` trains on GPU ``i`` (NCCL); without it, the processes share the
    CPU cores (gloo), each with ``cores // nproc`` compute threads unless ``--num-threads`` or
    ``OMP_NUM_THREADS`` says otherwise.
    """
    nproc = config.nproc
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if use_cuda and nproc > torch.cuda.device_count():
        raise ConfigError(f"nproc={nproc} processes need {nproc} GPUs, torch sees "
                          f"{torch.cuda.device_count()}; use --nproc at most that, or --device cpu")
    if use_cuda:
        log.info("starting %d processes, one per GPU (NCCL)", nproc)
    else:
        threads = config.num_threads or max(1, (os.cpu_count() or 1) // nproc)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # inherited by the processes
        log.info("no CUDA device in use: starting %d CPU processes (gloo), %s compute threads each", nproc,
                 os.environ["OMP_NUM_THREADS"])
    launcher = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # a free port on this machine, as --standalone
        max_restarts=0,  # a failed rank fails the run; `--resume` continues it
    )
    with tempfile.TemporaryDirectory(prefix="phasenets-launch-") as folder:
        # the processes read the config this process resolved (flags, config file, resumed run)
        config_file = Path(folder) / "config.yaml"
        config.save(config_file)
        try:
            elastic_launch(launcher, sys.executable)("-m", "phasenets", "train", "--config", str(config_file))
        except ChildFailedError as error:
            log.error("%s", error.format_msg())
            _, failure = error.get_first_failure()
            return max(1, failure.exitcode)  # negative: killed by a signal
    return 0
