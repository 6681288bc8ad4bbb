"""Getting a dataset archive: mirrors, md5, resumed transfers, safe extraction.

    from download import download_source
    download_source("data", voc.VOC)   # what `python dataset.py --download` runs

torchvision's own download helpers take one URL and no resume; VOC's Oxford host is often
down, so this module tries a list of mirrors, resumes a broken transfer with an HTTP Range
request, and refuses an archive whole if any member would land outside the data root.
A marker file, written only once an extraction has finished, tells a complete tree from one
that Ctrl+C or a full disk cut short.
"""

from cli import UserError

import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from torchvision.datasets.utils import calculate_md5
from tqdm import tqdm

from voc import COMPLETE_MARKER, Source, is_present

# Far above VOC and SBD (tens of thousands of files, 2 GB and 1.4 GB): an archive beyond
# these is not one of them, and would fill the disk before the layout check could refuse it.
MAX_MEMBERS, MAX_BYTES = 200_000, 16 * 2**30


def download(url: str, dest: Path, timeout: float = 30) -> None:
    """Download url to dest, resuming a partial dest with an HTTP Range request.

    A server that ignores Range answers 200 with the whole file: we then restart from zero.
    """
    offset = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # nothing left to fetch: the partial file is already complete
            return
        raise
    with response:
        if response.status != 206:
            offset = 0
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with (
            open(dest, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                dynamic_ncols=True,
            ) as bar,
        ):
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))


def fetch_archive(urls: list, dest: Path, md5: str) -> None:
    """Try each mirror in turn until one yields a file with the right md5, saved at dest.

    A broken transfer keeps dest + ".part" so the next try resumes it; a file with the wrong
    md5 is deleted, so nothing corrupt is left behind.
    """
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        print(f"downloading {url}")
        try:
            download(url, part)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            errors.append(f"{url}: {e}")
            continue
        got = calculate_md5(str(part))
        if got == md5:
            part.replace(dest)
            return
        part.unlink()
        errors.append(f"{url}: md5 mismatch (got {got}, expected {md5}); partial file deleted")
    raise UserError(
        f"could not download {dest.name} from any mirror ({'; '.join(errors)}); download it "
        f"by hand, put it at {dest}, and run the same command again"
    )


def safe_extract(archive: Path, dest: Path, source: Source | None = None) -> None:
    """Extract a tar archive, refusing it whole, before a single file is written, if any member
    could land outside dest (absolute path, '..', link or device), names both a file and a
    folder, if there are more than MAX_MEMBERS members or MAX_BYTES in all, or if it lacks
    what `source` needs. A read or write failure midway (a truncated archive, a full disk, a
    read-only folder) is one error; the missing completion marker then says the tree is not
    whole."""
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()  # reads the whole archive: a truncated one fails here
            check_members(archive, dest, members, source)
            # The "data" filter (Python >= 3.10.12) repeats these checks inside tarfile itself.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            bar = tqdm(members, desc=f"extracting {archive.name}", unit="file", dynamic_ncols=True)
            for m in bar:
                tar.extract(m, dest, **extra)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(
            f"cannot extract {archive} into {dest} ({getattr(e, 'strerror', None) or e}); "
            "check the free space and the folder's permissions, or delete the archive and "
            "download it again"
        ) from None


def check_members(archive: Path, dest: Path, members: list, source: Source | None) -> None:
    if len(members) > MAX_MEMBERS or sum(m.size for m in members) > MAX_BYTES:
        raise UserError(
            f"refusing {archive}: more than {MAX_MEMBERS:,d} files or {MAX_BYTES:,d} bytes"
        )
    kinds = {}
    for m in members:
        inside = (dest / m.name).resolve().is_relative_to(dest)
        if os.path.isabs(m.name) or ".." in Path(m.name).parts or not inside:
            raise UserError(f"refusing {archive}: member {m.name!r} escapes {dest}")
        if not (m.isfile() or m.isdir()):
            raise UserError(f"refusing {archive}: member {m.name!r} is not a regular file")
        name = Path(m.name).as_posix()
        if kinds.setdefault(name, m.isdir()) != m.isdir():
            raise UserError(f"refusing {archive}: {m.name!r} is both a file and a folder")
    if source is not None:
        names = set(kinds)
        for needed in source.needed:
            path = (source.subdir / needed).as_posix()
            if not any(n == path or n.startswith(path + "/") for n in names):
                raise UserError(
                    f"refusing {archive}: it holds no {path}, so it is not {source.name}; "
                    "nothing was extracted"
                )


def is_complete(source: Source, data_root: str | Path) -> bool:
    """The tree is there and its extraction ran to the end."""
    root = Path(data_root)
    return is_present(source, root) and (root / source.subdir / COMPLETE_MARKER).exists()


def download_source(data_root: str | Path, source: Source) -> None:
    """Get source.archive into data_root (unless it is already there), check its md5 and
    extract it there, which gives data_root/source.subdir, then mark the tree complete.
    Nothing to do when a complete tree is there; an incomplete one is extracted again."""
    root = Path(data_root)
    if is_complete(source, root):
        print(f"{source.name} is already under {root / source.subdir}; nothing to do")
        return
    archive = root / source.archive
    if (root / source.subdir).exists():
        print(
            f"{root / source.subdir} has no completion marker (an interrupted extraction?): "
            "extracting again"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root}: {e.strerror or e}") from None
    if archive.is_file():
        print(f"found {archive}, checking its md5")
        if calculate_md5(str(archive)) != source.md5:
            raise UserError(
                f"{archive} has the wrong md5 (expected {source.md5}); delete it and "
                "run again to download it"
            )
    else:
        fetch_archive(list(source.mirrors), archive, source.md5)
    safe_extract(archive, root, source)  # refuses an archive without source.needed
    (root / source.subdir / COMPLETE_MARKER).write_text(
        f"extracted from {source.archive}\n", encoding="utf-8"
    )
    print(f"{source.name} ready under {root / source.subdir}")
