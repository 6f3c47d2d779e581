"""The GPU suite (benchmarks/gpu_suite.py) runs end to end in its small CPU mode and prints every section."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def load_benchmark(name):
    """Imports a benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_small_mode_prints_every_figure(monkeypatch, capsys):
    suite = load_benchmark("gpu_suite")
    monkeypatch.setattr(sys, "argv", ["gpu_suite.py", "--device", "cpu", "--small"])
    suite.main()
    output = capsys.readouterr().out
    number = r"\s+([0-9.]+)"
    steps = re.findall(r"^(LAP \+ ASTP|WeightedLayerSum\+ECAPA)\s+2\s+([12])" + number * 4 + "$", output, re.MULTILINE)
    assert sorted((name, stage) for name, stage, *_ in steps) == sorted(
        (name, stage) for name in ("LAP + ASTP", "WeightedLayerSum+ECAPA") for stage in "12"
    )
    assert all(float(value) > 0 for *_, step, floor, ratio, peak in steps for value in (step, floor, ratio))
    modes = re.findall(r"^(base-plus|large-cnn)\s+(single|batched|masked)" + number * 3 + r"\s+(\S+)$", output, re.MULTILINE)
    assert [(front_end, mode) for front_end, mode, *_ in modes] == [
        ("base-plus", "single"), ("base-plus", "batched"), ("base-plus", "masked"),
        ("large-cnn", "single"), ("large-cnn", "batched"),
    ]
    # Every batched way gives the embeddings of one at a time.
    assert all(float(difference) < 1e-5 for *_, difference in modes)
    as_norm = re.search(r"AS-Norm.*ratio ([0-9.]+)x; largest difference (\S+)$", output, re.MULTILINE)
    assert as_norm is not None and float(as_norm.group(2)) < 1e-4
