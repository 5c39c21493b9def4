"""The one way the project downloads a file: the seed tasks and the SuperNI files.

:func:`fetch` hands the work to pooch (``pooch.retrieve``), the scientific Python community's
library for checksummed data downloads: it writes to a temporary file beside the target, checks
the SHA-256 and only then moves the file into place, so a kill mid-download, a changed source or
two processes fetching the same file (``accelerate launch``) never leave a wrong file in the
cache. A file already in the cache is used without a request (after its SHA-256 is checked, when
one is pinned). ``file://`` URLs (mirrors on a shared disk, tests) are copied the same way.

Every failure is one line (:class:`refine_af.errors.UserError`) that ends with ``hint``: the
setting that makes the download unnecessary.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from refine_af.errors import UserError, one_line

TIMEOUT_SECONDS = 60.0


def _copy_local(url: str, output_file: Any, pooch: Any) -> None:
    """A pooch downloader for ``file://`` URLs."""
    source = Path(url2pathname(unquote(urlparse(url).path)))
    with source.open("rb") as reader:
        if isinstance(output_file, (str, Path)):
            with open(output_file, "wb") as writer:
                shutil.copyfileobj(reader, writer)
        else:
            shutil.copyfileobj(reader, output_file)


def fetch(url: str, target: Path, sha256: str | None, hint: str) -> Path:
    """``target``, downloaded from ``url`` unless it is already there; checked against
    ``sha256`` when given (a file without a pinned checksum is checked by its reader)."""
    import pooch
    import requests

    logging.getLogger("pooch").setLevel(logging.WARNING)  # no "Downloading ..." lines
    target.parent.mkdir(parents=True, exist_ok=True)
    downloader = (
        _copy_local
        if url.startswith("file:")
        else pooch.HTTPDownloader(timeout=TIMEOUT_SECONDS, progressbar=False)
    )
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha256:{sha256}" if sha256 else None,
            fname=target.name,
            path=target.parent,
            downloader=downloader,
        )
    except ValueError as error:  # pooch's checksum mismatch
        if sha256 is None or "hash" not in str(error):
            raise UserError(f"cannot download {url} ({one_line(error)}): {hint}") from error
        raise UserError(
            f"download of {url} does not match its pinned SHA-256 {sha256[:12]}...: the source "
            f"changed or the mirror is wrong; {hint}"
        ) from error
    except (OSError, requests.RequestException) as error:
        reason = one_line(error)
        raise UserError(f"cannot download {url} ({reason}): {hint}") from error
    return Path(path)
