"""Multi-process training on CPU: gloo, 2 processes, tiny data and a tiny network.

Each job runs as a subprocess under a timeout, so a hang fails its test instead of stalling CI.
This file is also the job's entry point: torchrun runs it as a script, and ``_worker`` then trains
one rank, records what that rank did (checkpoint writes, optimizer steps, its feature caches,
final metrics and weights) and, when asked, fails after a chosen step by raising or by killing
itself, or raises in its first cache build.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from phasenets.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 120  # far above a healthy job (about 10 s): only a hang gets near it
COLLECTIVE_TIMEOUT_S = 20  # the jobs' dist_timeout: a failure must end the job well within it


def tiny_ddp_net(dropout: float = 0.0):
    """Three blocks and linear heads without batch norm, so that one step over a batch split in two halves computes
    the same update as one step over the whole batch (DDP averages gradients; batch norm would
    normalize each half by its own statistics). ``dropout`` > 0 draws masks (other ones than one
    process would), for the resume test."""
    from phasenets.models import BlockwiseNet

    blocks = [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * 4 * 4, 3)),
    ]
    return BlockwiseNet.from_modules(blocks, 3, (1, 16, 16), head="linear")


def job_config(data_dir: Path, output: Path, **options) -> dict:
    """The jobs cache the frozen prefix (``auto``: in RAM) in fp32, so that reading features back
    changes nothing: runs with 1 or 2 processes, with or without the cache, compare within float32
    rounding (fp16 storage could round one rank's features an ulp apart from the other run's)."""
    settings = dict(data_dir=str(data_dir), output=str(output), in_channels=1, batch_size=4, max_epochs=2,
                    patience=0, num_workers=0, loader="torch", tensorboard=False, optimizer="adam", lr=0.01,
                    seed=0, deterministic=True, num_threads=1, dist_timeout=COLLECTIVE_TIMEOUT_S, cache_dtype="fp32")
    settings.update(options)
    return settings


# ----------------------------------------------------------------------------------------------
# the job side


def _worker(spec: dict) -> None:
    """One rank of a test job: train, then write ``rank<r>.json`` and ``weights-rank<r>.pt``."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from phasenets.config import TrainConfig
    from phasenets.cache.levels import FeatureLevels
    from phasenets.train import PhaseTrainer
    from phasenets.train import loop
    from phasenets.train import recorder as recorder_module

    rank = int(os.environ["RANK"])
    record_dir = Path(spec["record_dir"])
    saves: list[str] = []
    steps = [0]
    failure = spec.get("fail")

    def count_step(*_):
        steps[0] += 1
        # After a step, not before one: its gradient all-reduce means rank 0 has saved every
        # checkpoint of the epochs before, so what the failed run leaves behind is certain.
        if failure is not None and failure["rank"] == rank and steps[0] == failure.get("after_step"):
            (record_dir / "failed_at").write_text(str(time.time()))
            if failure["how"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure on rank {rank}")

    def failing_build(*_):
        (record_dir / "failed_at").write_text(str(time.time()))
        raise RuntimeError(f"injected cache build failure on rank {rank}")

    register_optimizer_step_post_hook(count_step)
    if failure is not None and failure["rank"] == rank and failure["how"] == "raise in a cache build":
        FeatureLevels._fill = failing_build
    save_checkpoint = recorder_module.save_checkpoint

    def recording_save(path, payload, copies=()):
        saves.extend(Path(name).name for name in (path, *copies))
        return save_checkpoint(path, payload, copies)

    recorder_module.save_checkpoint = recording_save
    projections: list[list[list[float]]] = []  # per phase that had one: the similarity projection's weights
    end_phase = loop.end_phase

    def recording_end_phase(setup, state, done):
        if state.criterion.projection is not None:
            projections.append([p.detach().flatten().tolist() for p in state.criterion.projection.parameters()])
        return end_phase(setup, state, done)

    loop.end_phase = recording_end_phase
    config = TrainConfig(**spec["config"])
    torch.manual_seed(0)
    trainer = PhaseTrainer(config, model=tiny_ddp_net(spec.get("dropout", 0.0)))
    result = trainer.fit()
    record = {"saves": saves, "steps": steps[0], "final": result.final, "projections": projections,
              "cache": {"enabled": result.cache.enabled, "builds": result.cache.builds, "reuses": result.cache.reuses}}
    (record_dir / f"rank{rank}.json").write_text(json.dumps(record))
    torch.save(result.model.state_dict(), record_dir / f"weights-rank{rank}.pt")


# ----------------------------------------------------------------------------------------------
# the test side


def run_job(spec: dict, tmp_path: Path, nproc: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    """Start ``spec`` in ``nproc`` processes under torchrun; returns the process and its seconds."""
    Path(spec["record_dir"]).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, json.dumps(spec)]
    started = time.perf_counter()
    job = subprocess.run(command, cwd=tmp_path, env=_job_environment(), capture_output=True, text=True,
                         timeout=JOB_TIMEOUT_S)
    return job, time.perf_counter() - started


def _job_environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def assert_bitwise_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def read_records(record_dir: Path, nproc: int = 2) -> list[dict]:
    return [json.loads((record_dir / f"rank{rank}.json").read_text()) for rank in range(nproc)]


@pytest.fixture(scope="module")
def full_batch_data(tmp_path_factory) -> Path:
    """36 training images: one global batch of 36 is one step over every sample."""
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("full-batch"), {"train": 12, "validation": 4})


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """15 training and 9 validation images: neither splits evenly over two processes."""
    from conftest import write_dataset

    return write_dataset(tmp_path_factory.mktemp("odd"), {"train": 5, "validation": 3})


def test_shards_are_fixed_disjoint_and_cover_the_split():
    from phasenets.train.distributed import shard

    items = list(range(11))
    for world_size in (1, 2, 3, 4):
        evaluation = [shard(items, rank, world_size, pad=False) for rank in range(world_size)]
        assert sorted(sum(evaluation, [])) == items  # each item exactly once
        training = [shard(items, rank, world_size, pad=True) for rank in range(world_size)]
        assert {len(part) for part in training} == {-(-len(items) // world_size)}  # equal steps
        assert set(sum(training, [])) == set(items)
        assert len(sum(training, [])) - len(items) <= world_size - 1  # repeats only to pad
    with pytest.raises(ValueError, match="at least one"):
        shard([1], 0, 2, pad=False)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        shard(items, 2, 2, pad=True)


def test_ranks_shuffle_their_shards_by_their_own_seeds():
    from phasenets.train.distributed import DistributedContext

    first, second = (DistributedContext(rank, rank, 2, 2, torch.device("cpu")) for rank in range(2))
    assert first.rank_seed(7) == 7  # one process shuffles as it always did
    assert second.rank_seed(7) not in (7, second.rank_seed(8))


def test_two_processes_match_one_process_at_the_same_global_batch(full_batch_data, tmp_path):
    """36 images, global batch 36: every step sees every image in both runs, so only the order of
    float additions differs (DDP averages two half-batch gradients; one process sums all 36).
    Over 6 Adam steps that stays within float32 rounding: weights agree to 1e-5, and the
    validation metrics (sums all-reduced in float64) are equal."""
    from phasenets.config import TrainConfig
    from phasenets.train import PhaseTrainer

    spec = {"record_dir": str(tmp_path / "records"),
            "config": job_config(full_batch_data, tmp_path / "two", batch_size=18)}
    job, _ = run_job(spec, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr

    torch.manual_seed(0)
    single = PhaseTrainer(TrainConfig(**job_config(full_batch_data, tmp_path / "one", batch_size=36)),
                          model=tiny_ddp_net()).fit()
    weights = torch.load(tmp_path / "records" / "weights-rank0.pt", weights_only=True)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-5, msg=name)
    records = read_records(tmp_path / "records")
    for record in records:
        # auto cached each rank's shard: levels 0 (the images), 1 and 2 of train and validation
        assert record["cache"] == {"enabled": True, "builds": 6, "reuses": 0}
        assert record["final"]["count"] == 12  # the validation split, each image once
        assert record["final"]["confusion_matrix"] == single.final["confusion_matrix"]
        assert record["final"]["loss"] == pytest.approx(single.final["loss"], rel=1e-5)
    # rank 0 alone writes checkpoints and the run's files
    assert records[0]["saves"] and records[1]["saves"] == []
    written = sorted(path.name for path in (tmp_path / "two" / "checkpoints").iterdir())
    assert written == sorted(set(records[0]["saves"]))
    assert (tmp_path / "two" / "summary.json").is_file()


def test_the_similarity_projection_learns_from_every_ranks_batches(odd_data, tmp_path):
    """The similarity term's projection lives outside the DDP-wrapped stage: its gradients are
    averaged by the loop, so every rank ends each phase with the same projection (the one rank
    0's checkpoints hold and a resumed run gives every rank), though each saw only its shard."""
    spec = {"record_dir": str(tmp_path / "records"),
            "config": job_config(odd_data, tmp_path / "run", similarity_weight=0.9)}
    job, _ = run_job(spec, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    first, second = (record["projections"] for record in read_records(tmp_path / "records"))
    assert len(first) == 2  # the two phases that end in an auxiliary head; the classifier's has none
    assert first == second


def fail_job(how: str, data_dir: Path, tmp_path: Path, dropout: float = 0.0,
             **options) -> subprocess.CompletedProcess:
    """A job whose rank 1 fails: ``raise`` or ``kill`` after step 1 of phase 3's epoch 2, or
    ``raise in a cache build`` (its first, at phase 2's start); checks that every rank ended,
    with a non-zero exit, well within the collective timeout."""
    failure = {"rank": 1, "how": how}
    if how != "raise in a cache build":
        failure["after_step"] = 11  # 2 steps per epoch, 2 epochs per phase
    spec = {"record_dir": str(tmp_path / "failed"), "dropout": dropout,
            "config": job_config(data_dir, tmp_path / "run", **options), "fail": failure}
    job, _ = run_job(spec, tmp_path)
    assert job.returncode != 0
    seconds = time.time() - float((tmp_path / "failed" / "failed_at").read_text())
    assert seconds < COLLECTIVE_TIMEOUT_S, f"the job ended {seconds:.0f}s after rank 1 failed"
    assert not (tmp_path / "failed" / "rank0.json").exists()  # rank 0 did not carry on alone
    return job


def test_a_killed_rank_ends_the_job(odd_data, tmp_path):
    fail_job("kill", odd_data, tmp_path)


def test_a_rank_that_raises_ends_the_job_and_the_resumed_run_ends_as_an_uninterrupted_one(odd_data, tmp_path):
    """Uneven data and dropout too: 15 training images make shards of 8 (rank 1: 7 and 1 repeat),
    9 validation images make evaluation shards of 5 and 4 that count each image once."""
    # one persistent loader worker: a loader that starts its iterator anew on resume must not
    # shift the dropout masks
    reference = {"record_dir": str(tmp_path / "reference"), "dropout": 0.5,
                 "config": job_config(odd_data, tmp_path / "reference-run", num_workers=1)}
    job, _ = run_job(reference, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    records = read_records(tmp_path / "reference")
    assert [record["steps"] for record in records] == [12, 12]  # 2 batches of 4 x 2 epochs x 3 phases
    assert [record["final"]["count"] for record in records] == [9, 9]
    assert sum(map(sum, records[0]["final"]["confusion_matrix"])) == 9

    job = fail_job("raise", odd_data, tmp_path, dropout=0.5, num_workers=1)
    assert "injected failure on rank 1" in job.stdout + job.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "phase3-last.pt").is_file()  # phase 3, epoch 1
    resumed = {"record_dir": str(tmp_path / "resumed"), "dropout": 0.5,
               "config": job_config(odd_data, run_dir, resume=str(run_dir), num_workers=1)}
    job, _ = run_job(resumed, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    # what was left: phase 3's epoch 2 (the one with dropout), on both ranks
    assert [record["steps"] for record in read_records(tmp_path / "resumed")] == [2, 2]
    # Bitwise the same phase end. The final weights are those of the best epoch, which may be
    # epoch 1, so epoch 2's own record shows that it trained the same: its losses and accuracies
    # to the 6 digits metrics.csv keeps.
    expected = load_checkpoint(tmp_path / "reference-run" / "checkpoints" / "phase3-last.pt")
    ended = load_checkpoint(run_dir / "checkpoints" / "phase3-last.pt")
    assert_bitwise_equal(ended["model_state"], expected["model_state"])

    def epoch_two(run: Path) -> list[dict]:
        rows = csv.DictReader(open(run / "metrics.csv"))
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows if row["phase"] == "3"
                and row["epoch"] == "2"]

    assert len(epoch_two(run_dir)) == 2 and epoch_two(run_dir) == epoch_two(tmp_path / "reference-run")


def test_a_rank_whose_cache_build_raises_ends_the_job(odd_data, tmp_path):
    job = fail_job("raise in a cache build", odd_data, tmp_path)
    assert "injected cache build failure on rank 1" in job.stdout + job.stderr


# ----------------------------------------------------------------------------------------------
# per-rank feature caches


def test_two_processes_train_from_their_caches_as_without_one(odd_data, tmp_path):
    """Each rank caches its own shard (rank 1's padded with a repeat) in fp32; reading it back
    gives the batches recomputing would, so training ends the same (as in one process:
    test_cached_training)."""
    for cache in ("host", "off"):
        spec = {"record_dir": str(tmp_path / cache),
                "config": job_config(odd_data, tmp_path / f"run-{cache}", cache=cache)}
        job, _ = run_job(spec, tmp_path)
        assert job.returncode == 0, job.stdout + job.stderr
    cached, recomputed = read_records(tmp_path / "host"), read_records(tmp_path / "off")
    assert [record["cache"]["builds"] for record in cached] == [6, 6]  # levels 0-2 of train, validation
    assert [record["cache"]["enabled"] for record in recomputed] == [False, False]
    for with_cache, without in zip(cached, recomputed):
        assert with_cache["final"]["confusion_matrix"] == without["final"]["confusion_matrix"]
        assert with_cache["final"]["loss"] == pytest.approx(without["final"]["loss"], rel=1e-6)
    reference = torch.load(tmp_path / "off" / "weights-rank0.pt", weights_only=True)
    for name, value in torch.load(tmp_path / "host" / "weights-rank0.pt", weights_only=True).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_ranks_keep_their_own_disk_caches_and_only_the_same_ranks_reuse_them(odd_data, tmp_path):
    """Two ranks sharing --cache-dir write a file each per level and split; a second run reuses
    them all, except a file of the other rank put in place of one of its own (same shape, other
    shard: the fingerprint tells them apart); one process caches anew under its own names."""
    from phasenets.config import TrainConfig
    from phasenets.train import PhaseTrainer

    shared = tmp_path / "shared-cache"

    def run(name: str) -> list[dict]:
        spec = {"record_dir": str(tmp_path / name),
                "config": job_config(odd_data, tmp_path / name / "run", cache="disk", cache_dir=str(shared))}
        job, _ = run_job(spec, tmp_path)
        assert job.returncode == 0, job.stdout + job.stderr
        return read_records(tmp_path / name)

    first = run("first")
    files = sorted(path.name.rsplit("-", 1)[0] for path in shared.iterdir())  # no lock file left either
    assert files == sorted(f"level{level}-{split}-rank{rank}of2"
                           for level in (1, 2) for split in ("train", "validation") for rank in (0, 1))
    assert [record["cache"]["builds"] for record in first] == [4, 4]

    [own] = shared.glob("level2-train-rank0of2-*.pncache")
    [other] = shared.glob("level2-train-rank1of2-*.pncache")
    shutil.copyfile(other, own)
    second = run("second")
    assert [(record["cache"]["builds"], record["cache"]["reuses"]) for record in second] == [(1, 3), (0, 4)]
    assert_bitwise_equal(torch.load(tmp_path / "second" / "weights-rank0.pt", weights_only=True),
                         torch.load(tmp_path / "first" / "weights-rank0.pt", weights_only=True))

    torch.manual_seed(0)
    result = PhaseTrainer(TrainConfig(**job_config(odd_data, tmp_path / "one", cache="disk", cache_dir=str(shared))),
                          model=tiny_ddp_net()).fit()
    assert (result.cache.builds, result.cache.reuses) == (4, 0)
    assert len(list(shared.glob("*.pncache"))) == 8 + 4


def test_train_command_starts_its_own_processes(odd_data, tmp_path):
    """``--num_gpu 2`` (seed 000's flag) on a machine without CUDA: two gloo CPU processes."""
    command = [sys.executable, "-m", "phasenets", "train", "--data-dir", str(odd_data), "--output", "run",
               "--model", "lenet5", "--in-channels", "1", "--max-epochs", "1", "--batch-size", "4",
               "--num-workers", "0", "--loader", "torch", "--tensorboard", "false", "--device", "cpu",
               "--num_gpu", "2", "--num-threads", "1", "--amp", "bf16"]
    job = subprocess.run(command, cwd=tmp_path, env=_job_environment(), capture_output=True, text=True,
                         timeout=JOB_TIMEOUT_S)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "starting 2 CPU processes (gloo)" in job.stdout + job.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["count"] == 9
    assert job.stdout.count("done in") == 1  # one line for the whole job, from rank 0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_one_machine_train_as_one_node_with_two_processes(odd_data, tmp_path):
    """The README's recipe for a cluster, with both "machines" here: two torchrun launchers, one
    process each, meeting through a c10d rendezvous on 127.0.0.1 (gloo). Each rank caches its
    own shard, and the job ends with bitwise the weights of one launcher with two processes."""
    one_node = {"record_dir": str(tmp_path / "one-node"), "config": job_config(odd_data, tmp_path / "run-one")}
    job, _ = run_job(one_node, tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr

    spec = {"record_dir": str(tmp_path / "two-nodes"),
            "config": job_config(odd_data, tmp_path / "run-two", cache="disk", cache_dir=str(tmp_path / "caches"))}
    Path(spec["record_dir"]).mkdir(parents=True)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", __file__,
         json.dumps(spec)], cwd=tmp_path, env=_job_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=JOB_TIMEOUT_S)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)

    assert_bitwise_equal(torch.load(tmp_path / "two-nodes" / "weights-rank0.pt", weights_only=True),
                         torch.load(tmp_path / "one-node" / "weights-rank0.pt", weights_only=True))
    caches = sorted(path.name.rsplit("-", 1)[0] for path in (tmp_path / "caches").glob("*.pncache"))
    assert caches == sorted(f"level{level}-{split}-rank{rank}of2"
                            for level in (1, 2) for split in ("train", "validation") for rank in (0, 1))
    assert not list((tmp_path / "caches").glob("*.lock"))


# ----------------------------------------------------------------------------------------------
# mixed precision and memory layout in one process


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_trainable_part_in_the_chosen_dtype(amp, dtype, odd_data, tmp_path):
    from phasenets.config import TrainConfig
    from phasenets.train import PhaseTrainer

    model = tiny_ddp_net()
    seen = set()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # autocast casts these, whatever their input
            module.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    config = TrainConfig(**job_config(odd_data, tmp_path / "run", max_epochs=1, amp=amp, channels_last=True))
    result = PhaseTrainer(config, model=model).fit()
    assert seen == {dtype}
    assert result.final["count"] == 9
    assert model.blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # conftest, as pytest would have it
    _worker(json.loads(sys.argv[1]))
