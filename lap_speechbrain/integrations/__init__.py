"""Bridges to other toolkits that consume speaker embeddings.

:mod:`.pyannote` gives pyannote.audio's diarization pipelines a LAP model as
their speaker embedding (``pip install "lap_speechbrain[pyannote]"``). Each
bridge imports its toolkit when it is itself imported, so this package stays
importable without them.
"""
