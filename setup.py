"""Packaging for lap-speechbrain: Layer Attentive Pooling speaker verification on SpeechBrain."""

from pathlib import Path

import re

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# lap_speechbrain.integrations.pyannote; 3.x fails at import on torchaudio >= 2.9
# (torchaudio.AudioMetaData was removed).
PYANNOTE = "pyannote.audio>=4.0,<5"
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "lap_speechbrain" / "__init__.py").read_text()).group(1)

setup(
    name="lap_speechbrain",
    version=VERSION,
    description=(
        "Layer Attentive Pooling (LAP) over all WavLM hidden states for speaker "
        "verification, as a SpeechBrain plugin and recipe"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["lap_speechbrain", "lap_speechbrain.*"]),
    package_data={"lap_speechbrain.export": ["inference.yaml"]},
    install_requires=[
        "speechbrain>=1.1.0",
        "torch>=2.6",
        "torchaudio>=2.6",
        "transformers>=4.40",
        "hyperpyyaml>=1.2.2",
        "ruamel.yaml>=0.17.28",  # read directly to check overrides (lap_speechbrain.training.settings)
        "sentencepiece>=0.1.99",
        "huggingface_hub>=0.23",
        "soundfile>=0.12",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "demo": ["espeakng-loader>=0.2.4", "pyroomacoustics>=0.7.4"],
        "pyannote": [PYANNOTE],
        "test": [
            "pytest>=7.4",
            "espeakng-loader>=0.2.4",
            "pyroomacoustics>=0.7.4",
            PYANNOTE,
            # tests/test_packaging.py builds without isolation: setuptools with bdist_wheel.
            "build>=1.0",
            "setuptools>=70.1",
            "twine>=5.0",
        ],
    },
    entry_points={"console_scripts": ["lap-speechbrain=lap_speechbrain.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
