"""`phasenets` commands end to end on small datasets written by the data tools, and how they fail:
what the user did wrong, or what the machine refused, ends in one line on stderr and an exit code
(2: change the command; 1: fix the machine, run it again); a bug keeps its traceback."""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch

from phasenets.cli import EXIT_FAILED, EXIT_USAGE, _explain, main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a small shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's digits at 16 px: 10 classes, 8 train, 3 validation and 3 test images each."""
    root = tmp_path_factory.mktemp("digits")
    assert main(["data", "import", "digits", "--output", str(root), "--per-class", "8", "--val-per-class", "3",
                 "--test-per-class", "3", "--image-size", "16"]) == 0
    return root


FAST = ["--model_name", "lenet5", "--image_size", "16", "--num-workers", "0", "--loader", "torch",
        "--tensorboard", "false", "--batch_size", "16"]


def test_train_with_seed_flags_then_eval(digits, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data_dir", str(digits), "--dataset_name", "digits", "--freeze_layers", "false",
                 "--optimizer", "Adadelta", "--max_epoch", "2", "--use_test", "true", "--rand_seed", "2",
                 "--dr", "0.001", "--output", str(run), *FAST])
    assert code == 0
    assert f"run directory: {run}" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["schedule"] == "standard" and summary["config"]["num_classes"] == 10
    assert summary["config"]["lr_schedule"] == "inverse_time"

    assert main(["eval", "--checkpoint", str(run), "--data-dir", str(digits),
                 "--num-workers", "0", "--loader", "torch", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 30 and metrics["top5"] is not None
    assert metrics["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    assert len(metrics["confusion_matrix"]) == 10


def test_train_reports_dataset_problems(digits, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(digits, broken)
    shutil.rmtree(broken / "validation")
    assert main(["train", "--data-dir", str(broken), "--output", str(tmp_path / "run"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "phasenets train: error:" in error and "--val-split" in error


def test_data_check_fails_on_an_empty_class(digits, tmp_path, capsys):
    assert main(["data", "check", str(digits)]) == 0
    broken = tmp_path / "broken"
    shutil.copytree(digits, broken)
    shutil.rmtree(broken / "train" / "3")
    (broken / "train" / "3").mkdir()
    assert main(["data", "check", str(broken)]) != 0
    assert "3" in capsys.readouterr().out


def test_summary_and_its_errors(capsys):
    assert main(["summary", "--model", "lenet5", "--num-classes", "10", "--image-size", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    assert main(["summary", "--model", "lenet6", "--num-classes", "10"]) == 2
    assert "lenet5" in capsys.readouterr().err  # the valid names are listed
    assert main(["summary", "--model", "alexnet", "--num-classes", "10", "--image-size", "8"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert main(["summary", "--model", "lenet5", "--num-classes", "10", "--model-options", "downsample=invertible"]) == 0
    out = capsys.readouterr().out
    assert "1x32x32   24x14x14" in out  # C1's 6 maps, space-to-depth: 4x the maps at half the side
    assert "options (--model-options): activation=relu, downsample=invertible" in out
    assert main(["summary", "--model", "lenet5", "--num-classes", "10", "--model-options", "downsample"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_demo_on_a_tiny_budget(tmp_path, capsys):
    code = main(["demo", "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "runs"),
                 "--max-epochs", "1", "--num-workers", "0"])
    assert code == 0
    out = capsys.readouterr().out
    for schedule in ("phasewise", "standard"):
        assert str(tmp_path / "runs" / schedule) in out
        assert (tmp_path / "runs" / schedule / "summary.json").exists()
    for split in ("train", "validation", "test"):
        assert len(list((tmp_path / "data" / split).iterdir())) == 10


# ----------------------------------------------------------------------------------------------
# errors

FAST_RUN = [*FAST, "--max-epochs", "1", "--num-threads", "1"]


def fails(argv, capsys, code: int) -> str:
    """Run ``phasenets ARGV``; check the exit code and that stderr is one error line; return it."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"phasenets {argv[0]}: error: ")
    return lines[0]


def test_output_that_is_a_file(digits, tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    line = fails(["train", "--data-dir", str(digits), "--output", str(taken), *FAST_RUN], capsys, EXIT_USAGE)
    assert str(taken) in line
    assert taken.read_text() == "not a folder"


def test_read_only_output_folder(digits, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes into read-only folders anyway (root)")
        line = fails(["train", "--data-dir", str(digits), "--output", str(locked / "run"), *FAST_RUN], capsys,
                     EXIT_FAILED)
        assert "permission denied" in line and str(locked) in line
    finally:
        locked.chmod(0o755)


def test_full_disk_during_a_cache_commit(digits, tmp_path, capsys, monkeypatch):
    from phasenets.cache.storage import DiskBuild

    def commit(build, *_):  # what the header write or the fsync of a full disk raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), build.partial_path)

    monkeypatch.setattr(DiskBuild, "commit", commit)
    line = fails(["train", "--data-dir", str(digits), "--output", str(tmp_path / "run"), "--cache", "disk",
                  "--cache-dir", str(tmp_path / "cache"), *FAST_RUN], capsys, EXIT_FAILED)
    assert "no space left" in line and str(tmp_path / "cache" / "level1-") in line


def test_full_disk_where_the_write_does_not_name_its_file(digits, tmp_path, capsys, monkeypatch):
    def save(*_, **__):  # a write to an open handle: Python's OSError carries no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    line = fails(["train", "--data-dir", str(digits), "--output", str(tmp_path / "run"), "--schedule", "standard",
                  *FAST_RUN], capsys, EXIT_FAILED)
    assert "no space left" in line


@pytest.mark.parametrize("name, text, where", [
    ("run.yaml", "max_epochs: 3\nlr: [0.1\noptimizer: adam\n", "line 3"),
    ("run.yaml", "max_epochs: 3\n  lr: 0.1\n", "line 2"),
    ("run.json", '{"max_epochs": 3,\n "lr": }\n', "line 2"),
])
def test_malformed_config_file(tmp_path, capsys, name, text, where):
    config = tmp_path / name
    config.write_text(text)
    line = fails(["train", "--config", str(config)], capsys, EXIT_USAGE)
    assert f"{config}, {where}" in line and ("YAML" in line or "JSON" in line)


@pytest.mark.parametrize("argv", [
    ["train", "--config", "{missing}/run.yaml"],
    ["export", "--checkpoint", "{missing}/final.pt"],
    ["eval", "--checkpoint", "{missing}/final.pt", "--data-dir", "{missing}"],
    ["train", "--data-dir", "{missing}", "--output", "{missing}/run"],
    ["data", "check", "{missing}"],
])
def test_missing_input(tmp_path, capsys, argv):
    missing = tmp_path / "nowhere"
    argv = [arg.replace("{missing}", str(missing)) for arg in argv]
    code = EXIT_FAILED if argv[0] == "data" else EXIT_USAGE  # `data check` reports, then fails
    if argv[0] == "data":
        assert main(argv) == code and str(missing) in capsys.readouterr().out
        return
    assert str(missing) in fails(argv, capsys, code)
    assert not missing.exists()


def test_unreadable_input(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("max_epochs: 3\n")
    config.chmod(0)
    try:
        if os.access(config, os.R_OK):
            pytest.skip("this user reads unreadable files anyway (root)")
        line = fails(["train", "--config", str(config)], capsys, EXIT_FAILED)
        assert "permission denied" in line and str(config) in line
    finally:
        config.chmod(0o644)


def test_unknown_model_is_reported_before_the_images_and_leaves_nothing_behind(digits, tmp_path, capsys):
    """The preflight of this dataset fails (a corrupt image): the model's error must come first,
    and no folder may be left that makes the retry with the same --output refuse."""
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "train" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    run = tmp_path / "run"
    common = ["train", "--data-dir", str(data), "--output", str(run), *FAST_RUN]

    line = fails([*common, "--model", "lenet9"], capsys, EXIT_USAGE)
    assert "lenet9" in line and "lenet5" in line and "broken.png" not in line
    assert not run.exists()

    capsys.readouterr()
    assert main(common) == EXIT_USAGE  # now the preflight runs and stops on the image
    assert "broken.png" in capsys.readouterr().err
    assert main([*common, "--on-bad-image", "skip", "--schedule", "standard"]) == 0
    assert (run / "summary.json").is_file()


def test_a_bug_keeps_its_traceback(monkeypatch):
    import phasenets.models.summary

    def broken(model):
        return model.no_such_attribute

    monkeypatch.setattr(phasenets.models.summary, "summarize", broken)
    with pytest.raises(AttributeError):
        main(["summary", "--model", "lenet5", "--num-classes", "10"])


@pytest.mark.parametrize("error, code, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/run"), EXIT_FAILED, ["permission denied", "/data/run"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), EXIT_FAILED, ["read-only", "/mnt/ro/x"]),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/x.pt"), EXIT_FAILED, ["quota", "/home/x.pt"]),
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_FAILED, ["no space left"]),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/a/file/run"), EXIT_USAGE, ["/a/file/run", "not a folder"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data"), EXIT_USAGE, ["/data", "is a folder"]),
    (FileExistsError(errno.EEXIST, "File exists", "/out"), EXIT_USAGE, ["/out", "already exists"]),
    (FileNotFoundError(errno.ENOENT, "No such file", "/in.png"), EXIT_USAGE, ["/in.png", "does not exist"]),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), EXIT_FAILED, ["/a -> /b"]),
    (FileExistsError("out exists and is not an empty folder"), EXIT_USAGE, ["out exists"]),
])
def test_os_errors_become_one_line(error, code, words):
    explained_code, message = _explain(error)
    assert explained_code == code and "\n" not in message
    assert all(word in message for word in words), message


@pytest.mark.parametrize("error", [
    TypeError("unsupported operand"), AttributeError("no attribute"), KeyError("x"),
    OSError(errno.EBADF, "Bad file descriptor"),  # no file named and nothing a user did
])
def test_bugs_are_not_explained_away(error):
    assert _explain(error) is None
