"""Upload of an exported model folder to the Hugging Face Hub.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import List, Optional, Tuple, Union

from huggingface_hub import HfApi

REQUIRED_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "README.md")


def exported_files(folder: Union[str, Path]) -> List[Tuple[str, int]]:
    """The files of an exported folder with their sizes, checking it is one.

    Arguments
    ---------
    folder : str or Path
        An exported model folder.

    Returns
    -------
    list of (str, int)
        Relative posix path and size in bytes, sorted by path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not an exported model folder: it lacks {missing}")
    return sorted(
        (path.relative_to(folder).as_posix(), path.stat().st_size)
        for path in folder.rglob("*")
        if path.is_file()
    )


def push_to_hub(
    folder: Union[str, Path],
    repo_id: str,
    private: bool = False,
    commit_message: str = "Upload LAP speaker model",
    dry_run: bool = False,
    api: Optional[HfApi] = None,
) -> List[Tuple[str, int]]:
    """Creates ``repo_id`` if needed and uploads the exported ``folder``.

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
    api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
    )
    return files
