"""The offline demo's scaffolding: a synthetic multi-speaker corpus, a random WavLM, an MFCC baseline.

Installed with the ``[demo]`` extra. Nothing outside this subpackage imports it;
``hparams/demo.yaml`` and the training recipe reach it by name.
"""
