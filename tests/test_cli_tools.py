"""The curriculum and inspection commands end to end: train level 1 then level 2 of a hierarchy with
`--init-from`, then `eval --forgetting`, `export`, `viz` and `plot` on what they left."""
from __future__ import annotations

import json

import pytest
import torch

from phasenets.cli import main
from phasenets.export import load_safetensors_model
from phasenets.train import load_trained_model

# digits 0-4 vs 5-9; inside 5-9: 5 and 6 vs 7, 8 and 9
HIERARCHY = "small: [0, 1, 2, 3, 4]\nlarge:\n  five_six: [5, 6]\n  rest: [7, 8, 9]\n"
FAST = ["--model", "lenet5", "--image-size", "16", "--num-workers", "0", "--loader", "torch",
        "--tensorboard", "false", "--batch-size", "16", "--max-epochs", "1", "--schedule", "standard",
        "--num-threads", "1"]  # tiny models on a small shared machine


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(digits folder, level-1 run, level-2 run started from its blocks 1-4 at ModNet-style rates)."""
    root = tmp_path_factory.mktemp("cli-tools")
    data = root / "digits"
    assert main(["data", "import", "digits", "--output", str(data), "--per-class", "6", "--val-per-class", "2",
                 "--test-per-class", "2", "--image-size", "16"]) == 0
    hierarchy = root / "hierarchy.yaml"
    hierarchy.write_text(HIERARCHY)
    old, new = root / "level1", root / "level2"
    assert main(["train", "--data-dir", str(data), "--hierarchy", str(hierarchy), "--output", str(old), *FAST]) == 0
    assert main(["train", "--data-dir", str(data), "--hierarchy", str(hierarchy), "--hierarchy-within", "large",
                 "--init-from", str(old), "--reuse-blocks", "1-4", "--block-lr", "0.4,0.4,0.65,0.65,1",
                 "--output", str(new), *FAST]) == 0
    return data, old, new


def test_level_two_trains_inside_one_superclass(runs):
    _, old, new = runs
    assert json.loads((old / "summary.json").read_text())["classes"] == ["large", "small"]
    summary = json.loads((new / "summary.json").read_text())
    assert summary["classes"] == ["five_six", "rest"]
    assert summary["config"]["block_lr_multipliers"] == [0.4, 0.4, 0.65, 0.65, 1.0]


def test_forgetting_table(runs, capsys):
    data, old, new = runs
    capsys.readouterr()
    assert main(["eval", "--forgetting", "--old-run", str(old), "--new-run", str(new), "--data-dir", str(data),
                 "--num-workers", "0", "--loader", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "accuracy", "on", "old", "task"]
    assert lines[2].startswith("old network (level1)") and lines[2].endswith("(20 images)")
    assert lines[3].startswith("level2 blocks 1-4 + old head") and lines[3].endswith("(20 images)")


def test_eval_arguments_are_checked(runs, capsys):
    data, old, _ = runs
    assert main(["eval", "--data-dir", str(data)]) == 2
    assert main(["eval", "--forgetting", "--old-run", str(old), "--data-dir", str(data)]) == 2
    assert "--new-run" in capsys.readouterr().err


@pytest.mark.parametrize("export_format", ["onnx", "safetensors"])
def test_export_round_trip(runs, tmp_path, capsys, export_format):
    _, _, new = runs
    out = tmp_path / f"model.{export_format}"
    assert main(["export", "--checkpoint", str(new), "--format", export_format, "--output", str(out)]) == 0
    assert f"wrote {out} ({export_format}); largest difference" in capsys.readouterr().out
    model, _ = load_trained_model(new)
    images = torch.randn(4, *model.input_shape)
    expected = model(images)
    if export_format == "safetensors":
        reloaded, metadata = load_safetensors_model(out)
        assert metadata["classes"] == ["five_six", "rest"]
        torch.testing.assert_close(reloaded(images), expected, rtol=0, atol=0)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


def test_viz_and_plot_write_pngs(runs, tmp_path, capsys):
    data, _, new = runs
    assert main(["viz", "filters", "--checkpoint", str(new)]) == 0
    assert _is_png(new / "viz" / "filters.png")
    image = next((data / "test" / "7").iterdir())
    assert main(["viz", "features", "--checkpoint", str(new), "--image", str(image), "--block", "2",
                 "--out", str(tmp_path)]) == 0
    assert [path.name for path in tmp_path.iterdir()] == ["block2.png"] and _is_png(tmp_path / "block2.png")
    assert main(["viz", "features", "--checkpoint", str(new)]) == 2
    assert "needs --image" in capsys.readouterr().err

    (new / "accuracy.png").unlink()
    assert main(["plot", str(new)]) == 0
    assert _is_png(new / "accuracy.png") and _is_png(new / "loss.png")


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
