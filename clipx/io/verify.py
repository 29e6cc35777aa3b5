"""`verify`: are a checkpoint's files the bytes they were published or saved as?

The hub's cache keeps each file of a snapshot as a link to a blob named by its hash: the SHA-256 of the file
for files stored in LFS (the weights), git's blob SHA-1 for the others (config, tokenizer files), so a
download cut short or a disk error shows as a blob whose bytes no longer hash to its name. A folder
`save_pretrained` wrote is checked against its manifest (as `clipx.load` does on every load). Offline: only
the files on this machine are read. SHA-256 reads about 1 GB a second, so `clipx.load` leaves the hub's
files to this explicit call.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import CheckpointError
from ..files import file_digest
from ..model.save import check_saved
from .hub import resolve

_SHA256, _GIT_SHA1 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")


def verify(name_or_path: str | Path, revision: str | None = None) -> list[Path]:
    """Check every file of a checkpoint that links to a hub blob against the blob's name, and a folder
    clipx saved against its manifest. Returns the files checked against a blob name; a CheckpointError
    names the first that does not match, and what to do."""
    folder = resolve(name_or_path, revision, local_files_only=True).folder
    check_saved(folder)
    checked = []
    for path in sorted(folder.rglob("*")):
        if not path.is_symlink():
            continue
        blob = Path(os.readlink(path)).name
        if _SHA256.fullmatch(blob):
            digest = file_digest(path, hashlib.sha256())
        elif _GIT_SHA1.fullmatch(blob):  # git's name for the content: the SHA-1 of "blob <size>\0" and the bytes
            digest = file_digest(path, hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False))
        else:
            continue  # a link of the user's own, not the cache's
        if digest != blob:
            raise CheckpointError(f"{path} is damaged: the blob it links to ({path.resolve()}) does not hash to "
                                  "its name (a download cut short, or a disk error); delete the blob and load the "
                                  "model again to download it anew")
        checked.append(path)
    return checked

