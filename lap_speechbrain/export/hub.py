"""Upload of an exported model folder to the Hugging Face Hub.

Only the export's own files are uploaded: the names listed in its
``lap_export.json`` marker, each a plain file name of a regular file (not a
link). Anything else in the folder (``.env``, ``.git/``, notes, links to other
places) stays on the machine. The marker itself, which records local paths,
is not uploaded either.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import List, Optional, Tuple, Union

from huggingface_hub import CommitOperationAdd, HfApi

from lap_speechbrain.export.folder import EXPORT_MARKER, read_marker

REQUIRED_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "README.md")


def exported_files(folder: Union[str, Path]) -> List[Tuple[str, int]]:
    """The files of an exported folder that an upload sends, with their sizes.

    Arguments
    ---------
    folder : str or Path
        An exported model folder.

    Returns
    -------
    list of (str, int)
        File name and size in bytes, sorted by name.

    Raises
    ------
    FileNotFoundError
        The folder or one of its listed files is missing.
    ValueError
        The folder is not an export, or a listed file is a link or not a regular file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    marker = read_marker(folder)
    if marker is None:
        raise ValueError(f"{folder} is not an exported model folder: it has no valid {EXPORT_MARKER}")
    names = sorted(marker["files"])
    missing = [name for name in set(REQUIRED_FILES) | set(names) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete exported model folder: it lacks {sorted(missing)}")
    odd = [name for name in names if (folder / name).is_symlink() or not (folder / name).is_file()]
    if odd:
        raise ValueError(f"{folder}: {odd} are links or not regular files; export the model again")
    return [(name, (folder / name).stat().st_size) for name in names]


def push_to_hub(
    folder: Union[str, Path],
    repo_id: str,
    private: bool = False,
    commit_message: str = "Upload LAP speaker model",
    dry_run: bool = False,
    api: Optional[HfApi] = None,
) -> List[Tuple[str, int]]:
    """Creates ``repo_id`` if needed and uploads the exported ``folder``'s own files.

    The token comes from ``huggingface-cli login`` or ``HF_TOKEN``, as for
    any ``huggingface_hub`` call; it is never read, printed or written here.

    Arguments
    ---------
    folder : str or Path
        An exported model folder (``lap-speechbrain export``).
    repo_id : str
        ``user/name`` or ``org/name``.
    private : bool
        Create the repository as private (ignored if it exists).
    commit_message : str
        Commit message of the upload.
    dry_run : bool
        Only list what would be uploaded; no network access.
    api : HfApi or None
        The client (default ``HfApi()``).

    Returns
    -------
    list of (str, int)
        The uploaded (or, with ``dry_run``, the would-be uploaded) files and sizes.

    Example
    -------
    >>> push_to_hub("exported/lap-wavlm", "me/lap-wavlm", dry_run=True)  # doctest: +SKIP
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id {repo_id!r}: expected 'user/name'")
    files = exported_files(folder)
    if dry_run:
        return files
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    # An explicit list of files, not upload_folder: nothing but these leaves the machine.
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder) / name))
                  for name, _ in files]
    api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model")
    return files
