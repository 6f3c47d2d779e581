"""The published package: LICENSE, sdist and wheel contents, twine check, a wheel installed away from the checkout.

The sdist and wheel are built (``python -m build --no-isolation``) from a copy
of the checkout's files, so the checkout gets no build folders. The wheel is
installed without dependencies into a fresh virtual environment that borrows
this environment's site-packages for them (installing torch again would take
minutes); from a folder outside the checkout, that environment's
``lap-speechbrain`` command runs, and its Python exports a tiny trained model
with the command's ``export`` and loads it with SpeechBrain.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import torch

import lap_speechbrain

ROOT = Path(__file__).resolve().parents[1]


def checkout_files() -> list:
    """Files of the checkout as git sees them: tracked, or new and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


def plain_env() -> dict:
    """The environment without a PYTHONPATH that would put the checkout first."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel) built from a copy of the checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the project's")
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(source)],
        check=True, capture_output=True, env=plain_env(),
    )
    sdist, = (work / "dist").glob("*.tar.gz")
    wheel, = (work / "dist").glob("*.whl")
    return sdist, wheel


def test_license_is_the_apache_2_0_text_setup_declares():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license="Apache-2.0"' in (ROOT / "setup.py").read_text(encoding="utf-8")


def test_twine_accepts_the_sdist_and_the_wheel(dist):
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)],
        capture_output=True, text=True, env=plain_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_sdist_and_wheel_hold_the_license_and_every_package_file(dist):
    sdist, wheel = dist
    version = lap_speechbrain.__version__
    assert wheel.name == f"lap_speechbrain-{version}-py3-none-any.whl"
    package = [name for name in checkout_files() if name.startswith("lap_speechbrain/")]
    assert "lap_speechbrain/export/inference.yaml" in package
    with tarfile.open(sdist) as archive:
        prefix = f"lap_speechbrain-{version}/"
        in_sdist = {name.removeprefix(prefix) for name in archive.getnames()}
    assert {"LICENSE", "README.md", "setup.py", *package} <= in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        licenses = [name for name in in_wheel if ".dist-info/" in name and name.endswith("/LICENSE")]
        assert len(licenses) == 1
        assert archive.read(licenses[0]).decode() == (ROOT / "LICENSE").read_text(encoding="utf-8")
        metadata = archive.read(f"lap_speechbrain-{version}.dist-info/METADATA").decode()
    # Package data (the inference template, any yaml) is in the wheel with the modules.
    assert set(package) <= in_wheel
    assert "Apache-2.0" in metadata
    assert 'Provides-Extra: pyannote' in metadata


def test_wheel_in_a_fresh_venv_exports_and_loads_a_model(dist, make_training_output, tmp_path):
    _, wheel = dist
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)],
        check=True, capture_output=True, env=plain_env(),
    )
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Dependencies come from this environment; lines of a .pth are only added
    # to sys.path, so this environment's editable install stays inactive there.
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(fresh_site) / "borrowed_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")

    # The console script runs from the fresh environment.
    help_text = subprocess.run(
        [str(env_dir / "bin" / "lap-speechbrain"), "--help"], check=True, capture_output=True, text=True,
        env=plain_env(),
    ).stdout
    assert "export" in help_text

    training_output, encoder = make_training_output()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    torch.save(wavs, outside / "wavs.pt")
    # One interpreter (imports cost seconds): the command's export, then SpeechBrain's loading.
    script = (
        "import json, sys, torch, lap_speechbrain\n"
        "from lap_speechbrain.cli import main\n"
        "assert main(['export', sys.argv[1], 'exported']) == 0\n"
        "from speechbrain.inference.speaker import EncoderClassifier\n"
        "model = EncoderClassifier.from_hparams(source='exported')\n"
        "embeddings = model.encode_batch(torch.load('wavs.pt'))[:, 0]\n"
        "print(json.dumps({'file': lap_speechbrain.__file__, 'embeddings': embeddings.tolist()}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", script, str(training_output)], capture_output=True, text=True, cwd=outside,
        env=plain_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(loaded["file"]).is_relative_to(env_dir)  # the wheel's copy, not the checkout
    with torch.no_grad():
        expected = encoder(wavs, torch.ones(2))[:, 0]
    assert (torch.tensor(loaded["embeddings"]) - expected).abs().max() < 1e-5
