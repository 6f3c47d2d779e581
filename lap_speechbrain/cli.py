"""The ``lap-speechbrain`` command: verify, embed, export, push, plot-attention.

Examples::

    lap-speechbrain verify a.wav b.wav --model user/lap-wavlm-large
    lap-speechbrain embed wavs/ --model exported/ --out embeddings.pt
    lap-speechbrain export results/lap_wavlm_large/1986 exported/lap-wavlm-large
    lap-speechbrain export --reference-checkpoint model.state --ssl-source microsoft/wavlm-large exported/ref
    lap-speechbrain push exported/lap-wavlm-large user/lap-wavlm-large --dry-run
    lap-speechbrain plot-attention a.wav --model exported/ --out lap.png

``--model`` is an exported folder, a hub id or a training output folder (its
``model/``). Local folders are read in place; ``--savedir`` only applies to hub
ids. No command replaces a folder it did not make: ``export --overwrite``
replaces only an earlier export. Exit status: 0 success, 1 bad input or
failure (message on stderr), 2 usage.

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from lap_speechbrain.known_warnings import filter_known_warnings

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# --progress -> extract_embeddings(progress=...); None: bars only when stderr is a terminal.
PROGRESS = {"auto": None, "on": True, "off": False}


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="exported folder, hub id (user/repo) or training output folder")
    parser.add_argument("--savedir", default=None,
                        help="hub ids only: a new, empty or earlier --savedir folder where the model's "
                             "files are linked (default: read from the Hugging Face cache)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lap-speechbrain``."""
    parser = argparse.ArgumentParser(
        prog="lap-speechbrain",
        description="Speaker verification with WavLM + Layer Attentive Pooling (SpeechBrain).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser("verify", help="score two audio files (same speaker?)")
    verify.add_argument("first", help="audio file (any sample rate, mono or stereo)")
    verify.add_argument("second", help="audio file")
    verify.add_argument("--threshold", type=float, default=None,
                        help="same speaker when cosine >= threshold (default: the one stored with the model)")
    _model_arguments(verify)
    verify.set_defaults(run=run_verify)

    embed = commands.add_parser("embed", help="speaker embeddings of files into a .pt file")
    embed.add_argument("input", help="audio file, folder (searched recursively) or list file "
                                     "(one path per line, relative to the list's folder)")
    embed.add_argument("--out", required=True, help="output .pt: {'paths', 'embeddings' (N, E)}")
    embed.add_argument("--batch-size", type=int, default=8,
                       help="utterances per batch, grouped by length (default: 8)")
    embed.add_argument("--max-batch-seconds", type=float, default=600.0,
                       help="padded seconds of audio per batch (default: 600)")
    embed.add_argument("--normalize", action="store_true",
                       help="subtract the stored training-set mean embedding")
    embed.add_argument("--progress", choices=sorted(PROGRESS), default="auto",
                       help="progress bar over the files on stderr: auto (when stderr is a terminal), "
                            "on or off (default: auto)")
    _model_arguments(embed)
    embed.set_defaults(run=run_embed)

    export = commands.add_parser(
        "export", help="package a trained model for SpeechBrain / the Hub",
        usage="lap-speechbrain export TRAINING_OUTPUT OUT_DIR [options]\n"
              "       lap-speechbrain export --reference-checkpoint model.state --ssl-source X OUT_DIR [options]")
    export.add_argument("paths", nargs="+", metavar="PATH",
                        help="TRAINING_OUTPUT OUT_DIR, or OUT_DIR with --reference-checkpoint")
    export.add_argument("--reference-checkpoint", default=None,
                        help="model.state of the authors' reference implementation")
    export.add_argument("--ssl-source", default=None,
                        help="hub id or folder of the SSL model (config only) for --reference-checkpoint")
    export.add_argument("--labels", default=None,
                        help="with --reference-checkpoint: file of class names, one per line, in class order")
    export.add_argument("--results", default=None,
                        help="results.json of recipes/speaker_verification.py, for the card's results "
                             "(default: TRAINING_OUTPUT/evaluation/results.json or TRAINING_OUTPUT/results.json)")
    export.add_argument("--threshold", type=float, default=None,
                        help="verification threshold (default: the one training stored; a reference "
                             "checkpoint has none, so SpeechBrain's uncalibrated 0.25)")
    export.add_argument("--embedding-mean", default=None, help="torch.save-d (E,) training-set mean embedding")
    export.add_argument("--repo-id", default=None, help="hub id used in the model card's usage code")
    export.add_argument("--license", default=None,
                        help="license of the model card (default: the training output's, else apache-2.0)")
    export.add_argument("--dataset", action="append", default=None,
                        help="hub dataset id for the model card (repeatable; default: the training output's)")
    export.add_argument("--code-url", default=None,
                        help="git URL of lap-speechbrain's source: the card's install line becomes "
                             "'pip install git+URL' (default: the training output's)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it is an earlier export (never any other folder)")
    export.set_defaults(run=run_export)

    push = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    push.add_argument("folder", help="exported folder")
    push.add_argument("repo_id", help="user/name or org/name (created if missing)")
    push.add_argument("--dry-run", action="store_true", help="list the files; upload nothing")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--message", default="Upload LAP speaker model", help="commit message")
    push.set_defaults(run=run_push)

    plot = commands.add_parser("plot-attention", help="plot LAP's layer gates for one utterance")
    plot.add_argument("audio", help="audio file")
    plot.add_argument("--out", required=True, help="image file (png, pdf, svg)")
    _model_arguments(plot)
    plot.set_defaults(run=run_plot)
    return parser


def _load_model(args: argparse.Namespace):
    from lap_speechbrain.inference import load_encoder

    return load_encoder(args.model, savedir=args.savedir, device=args.device)


def _read_audio(model, path: str):
    from lap_speechbrain.inference import load_audio

    return load_audio(path, model.hparams.sample_rate, model.hparams.min_audio_samples)


def run_verify(args: argparse.Namespace) -> None:
    """Prints the cosine score and the decision (same speaker when score >= threshold)."""
    model = _load_model(args)
    threshold = model.threshold if args.threshold is None else args.threshold
    score, decision = model.verify_files(args.first, args.second, threshold=threshold)
    print(f"score {float(score):.4f}  threshold {threshold:.4f}  "
          f"{'same speaker' if bool(decision) else 'different speakers'}")


def audio_inputs(source: str) -> List[Path]:
    """The audio files named by a file, a folder or a list file."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise CommandError(f"{path}: no {'/'.join(AUDIO_EXTENSIONS)} files in this folder")
        return files
    if not path.is_file():
        raise CommandError(f"{path}: no such file or folder")
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return [path]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CommandError(f"{path}: neither audio ({'/'.join(AUDIO_EXTENSIONS)}) nor a text list") from error
    files = [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    if not files:
        raise CommandError(f"{path}: empty list of audio files")
    return [file if file.is_absolute() else path.parent / file for file in files]


def run_embed(args: argparse.Namespace) -> None:
    """Embeds files with the evaluation's extractor (length-grouped padded batches) and saves them."""
    import functools

    import torch

    from lap_speechbrain.fileio import atomic_open, remove_stale_temporaries, reporting_full_disk
    from lap_speechbrain.inference import load_audio
    from lap_speechbrain.scoring.embeddings import extract_embeddings

    if args.batch_size < 1:
        raise CommandError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.max_batch_seconds <= 0:
        raise CommandError(f"--max-batch-seconds {args.max_batch_seconds}: must be positive")
    files = audio_inputs(args.input)
    model = _load_model(args)

    def embed(wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        return model.encode_batch(wavs, wav_lens, normalize=args.normalize).reshape(wavs.shape[0], -1)

    table = extract_embeddings(
        # Row numbers as ids: a list file may name one file twice.
        [(str(row), str(path)) for row, path in enumerate(files)],
        embed,
        functools.partial(load_audio, target_sample_rate=model.hparams.sample_rate,
                          min_samples=model.hparams.min_audio_samples),
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
        # Long files as the mean of bounded chunks, as verify does: memory stays bounded.
        max_chunk_seconds=model.hparams.max_chunk_seconds,
        sample_rate=model.hparams.sample_rate,
        device=args.device,
        desc=f"embed {len(files)} files",
        progress=PROGRESS[args.progress],
    )
    out = Path(args.out)
    remove_stale_temporaries(out.parent, [out.name], existing=False)  # what a killed earlier run left
    with reporting_full_disk(out), atomic_open(out, "wb") as file:
        torch.save({"paths": [str(p) for p in files], "embeddings": torch.from_numpy(table.embeddings)}, file)
    print(f"{len(files)} embeddings of size {table.embeddings.shape[1]} -> {out}")


def run_export(args: argparse.Namespace) -> None:
    """Exports a training output folder or a reference checkpoint."""
    from lap_speechbrain.export.folder import export_reference, export_training_output

    card = dict(repo_id=args.repo_id, overwrite=args.overwrite,
                results=args.results, threshold=args.threshold, embedding_mean=args.embedding_mean)
    if args.license:
        card["license"] = args.license
    if args.dataset:
        card["datasets"] = args.dataset
    if args.code_url:
        card["code_url"] = args.code_url
    if args.reference_checkpoint is not None:
        if len(args.paths) != 1 or args.ssl_source is None:
            raise UsageError("with --reference-checkpoint give --ssl-source and exactly one OUT_DIR")
        labels = None
        if args.labels is not None:
            labels = [line.strip() for line in Path(args.labels).read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        out = export_reference(args.reference_checkpoint, args.ssl_source, args.paths[0], labels=labels, **card)
        if args.threshold is None:
            print("note: no --threshold; the model stores SpeechBrain's uncalibrated 0.25 and its card says so",
                  file=sys.stderr)
    else:
        if len(args.paths) != 2 or args.ssl_source is not None or args.labels is not None:
            raise UsageError("give TRAINING_OUTPUT OUT_DIR (--ssl-source and --labels go with "
                             "--reference-checkpoint)")
        out = export_training_output(args.paths[0], args.paths[1], **card)
    print(f"exported to {out}")


def run_push(args: argparse.Namespace) -> None:
    """Uploads (or lists, with --dry-run) an exported folder."""
    from lap_speechbrain.export.hub import push_to_hub

    files = push_to_hub(args.folder, args.repo_id, private=args.private,
                        commit_message=args.message, dry_run=args.dry_run)
    for name, size in files:
        print(f"{size:>14,d}  {name}")
    total = sum(size for _, size in files)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files ({total:,d} bytes) to https://huggingface.co/{args.repo_id}")
    readme = Path(args.folder, "README.md").read_text(encoding="utf-8")
    if args.repo_id not in readme:
        print(f"note: the model card's usage code does not name {args.repo_id}; re-export with "
              f"--repo-id {args.repo_id}", file=sys.stderr)


def run_plot(args: argparse.Namespace) -> None:
    """Plots the gates of one utterance (its first ``max_chunk_seconds`` if longer)."""
    from lap_speechbrain.inference.plots import plot_lap_attention

    model = _load_model(args)
    waveform = _read_audio(model, args.audio)
    seconds = model.hparams.max_chunk_seconds
    if seconds is not None and waveform.numel() > seconds * model.hparams.sample_rate:
        # Memory grows with the square of the length: plot the first chunk only.
        print(f"note: {args.audio} lasts {waveform.numel() / model.hparams.sample_rate:.1f} s; plotting its "
              f"first {seconds:g} s (the model's max_chunk_seconds)", file=sys.stderr)
        waveform = waveform[: int(seconds * model.hparams.sample_rate)]
    gates = plot_lap_attention(model.mods.embedding_model, waveform, args.out,
                               sample_rate=model.hparams.sample_rate, title=Path(args.audio).name)
    print(f"gates of {gates.shape[0]} heads x {gates.shape[1]} frames x {gates.shape[2]} layers -> {args.out}")


class UsageError(Exception):
    """Wrong combination of arguments: exit status 2."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``lap-speechbrain``; returns the exit status."""
    filter_known_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        parser.error(f"{args.command}: {error}")
    except (CommandError, ValueError, OSError, RuntimeError) as error:
        # AudioError, ExportError and ReferenceCheckpointError are ValueErrors;
        # missing files are OSErrors.
        print(f"lap-speechbrain {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
