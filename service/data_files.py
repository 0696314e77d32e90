"""A model's external data files in a job folder: names checked, archives unpacked safely.

An ONNX model whose weights live in files beside it (``model.onnx.data``) is uploaded either
with one extra multipart part per file (its filename is the tensor's ``location``), or as one
``.zip`` / ``.tar`` / ``.tar.gz`` archive holding the model and its data. Either way the files
land under ``<job>/data/`` and nowhere else:

* a name is a relative path of plain components: no ``..``, no absolute path or drive, no
  backslash or control character, a bounded depth and length;
* an archive holds only regular files and folders (no symbolic or hard links, devices, FIFOs),
  at most :data:`MAX_MEMBERS` of them, and exactly one ``.onnx`` file; the sizes it declares
  are added up before anything is written, and the bytes actually written are counted against
  the same limit as the upload itself (a member that lies about its size stops there).

The engine reads the files later under its own rules (``diagnostics.loading.onnx.external_data``).
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from service.blobs import DATA_DIR, MODEL_FILE
from service.errors import InvalidRequestError, PayloadTooLargeError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_MEMBERS = 1000
MAX_DEPTH = 8
MAX_COMPONENT = 255
_CHUNK = 1 << 20


class InvalidArchiveError(InvalidRequestError):
    error = "invalid_archive"


def is_archive_name(filename: str | None) -> bool:
    """Whether a model part's filename says it is an archive."""
    return filename is not None and filename.lower().endswith(ARCHIVE_SUFFIXES)


def checked_name(name: str, what: str) -> PurePosixPath:
    """``name`` as a safe relative path, or a 422 naming it.

    Raises:
        InvalidRequestError: empty, absolute, ``..``, backslash, control characters, too deep
            or too long.
    """
    shown = name[:120]
    problem = _name_problem(name)
    if problem:
        raise InvalidArchiveError(f"{what} {shown!r}: {problem}", field="data", name=shown)
    return PurePosixPath(name)


def _name_problem(name: str) -> str | None:
    if not name:
        return "empty name"
    if "\\" in name or any(unicodedata.category(ch)[0] == "C" for ch in name):
        return "backslashes and control characters are not allowed in names"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute paths are not allowed; names are relative to the model's folder"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "'..' is not allowed in names"
    if not parts:
        return "empty name"
    if len(parts) > MAX_DEPTH or any(len(part) > MAX_COMPONENT for part in parts):
        return f"too deep or too long (at most {MAX_DEPTH} folders of {MAX_COMPONENT} chars)"
    return None


def data_path(folder: Path, name: str, what: str = "data file") -> Path:
    """Where the data file ``name`` goes under ``folder`` (created), checked."""
    relative = checked_name(name, what)
    target = folder.joinpath(*(part for part in relative.parts if part != "."))
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):  # "a" given as a file, then "a/b"
        raise InvalidArchiveError(f"{what} {name[:120]!r} needs a folder where a file of the "
                                  "same name was given", field="data", name=name[:120]) from None
    if target.exists():
        raise InvalidArchiveError(f"{what} {name[:120]!r} is given twice", field="data",
                                  name=name[:120])
    return target


# --- archives ----------------------------------------------------------------------------------

class _Member:
    """What both archive kinds tell about a member, and how to read it."""

    def __init__(self, name: str, size: int, kind: str, opener) -> None:
        self.name, self.size, self.kind, self.open = name, size, kind, opener


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        file_type = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix mode (Windows zips)
        if file_type == stat.S_IFLNK:
            kind = "symbolic link"
        elif info.is_dir() or file_type == stat.S_IFDIR:
            kind = "dir"
        elif file_type not in (0, stat.S_IFREG):
            kind = "special file"
        else:
            kind = "file"
        yield _Member(info.filename, info.file_size, kind,
                      lambda info=info: archive.open(info))


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for info in archive:  # streams: headers are checked as they come, before any extraction
        if info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symbolic link"
        elif info.islnk():
            kind = "hard link"
        elif info.isfile():
            kind = "file"
        else:
            kind = "special file"
        yield _Member(info.name, info.size, kind,
                      lambda info=info: archive.extractfile(info))


def unpack_archive(archive_path: Path, filename: str, staging: Path, limit: int) -> str:
    """Unpack a model archive: its one ``.onnx`` becomes ``staging/model.onnx``, the files of
    its folder (and below) ``staging/data/``. Returns the model's name in the archive.

    Raises:
        InvalidArchiveError (422): not a zip/tar, a link or special member, a bad member name,
            too many members, no or several ``.onnx`` files.
        PayloadTooLargeError (413): the members' sizes, declared or actual, exceed ``limit``.
    """
    try:
        if filename.lower().endswith(".zip"):
            with zipfile.ZipFile(archive_path) as archive:
                members = _checked_members(_zip_members(archive), limit)
                return _extract(members, staging, limit)
        with tarfile.open(archive_path, mode="r:*") as archive:
            members = _checked_members(_tar_members(archive), limit)
            return _extract(members, staging, limit)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise InvalidArchiveError(f"model: {filename[:120]!r} is not a readable zip or tar "
                                  f"archive ({type(exc).__name__})", field="model") from None


def _checked_members(members: Iterator[_Member], limit: int) -> list[_Member]:
    files: list[_Member] = []
    total = count = 0
    for member in members:
        count += 1
        if count > MAX_MEMBERS:
            raise InvalidArchiveError(f"model: the archive has more than {MAX_MEMBERS} members",
                                      field="model", max_members=MAX_MEMBERS)
        checked_name(member.name, "archive member")
        if member.kind in ("symbolic link", "hard link", "special file"):
            raise InvalidArchiveError(f"archive member {member.name[:120]!r} is a "
                                      f"{member.kind}; only regular files and folders are "
                                      "unpacked", field="model", name=member.name[:120])
        if member.kind == "dir":
            continue
        total += member.size
        if total > limit:
            raise PayloadTooLargeError(f"model: the archive's members add up to over "
                                       f"{limit:,} bytes", field="model", limit=limit)
        files.append(member)
    models = [m for m in files if m.name.lower().endswith(".onnx")]
    if len(models) != 1:
        found = ", ".join(repr(m.name[:80]) for m in models[:5]) or "none"
        raise InvalidArchiveError(f"model: an archive must hold exactly one .onnx file (found "
                                  f"{found})", field="model")
    return files


def _extract(members: list[_Member], staging: Path, limit: int) -> str:
    (model,) = [m for m in members if m.name.lower().endswith(".onnx")]
    base = PurePosixPath(model.name).parent
    data = staging / DATA_DIR
    written = 0
    for member in members:
        relative = PurePosixPath(*[p for p in member.name.split("/") if p not in ("", ".")])
        if member is model:
            target = staging / MODEL_FILE
        elif base.parts and relative.parts[: len(base.parts)] != base.parts:
            continue  # outside the model's folder: no location can name it
        else:
            inside = PurePosixPath(*relative.parts[len(base.parts):])
            target = data_path(data, str(inside), "archive member")
        source = member.open()
        if source is None:
            continue
        with source, open(target, "wb") as sink:
            written = _copy(source, sink, written, limit)
    return PurePosixPath(model.name).name


def _copy(source: IO[bytes], sink: IO[bytes], written: int, limit: int) -> int:
    while chunk := source.read(_CHUNK):
        written += len(chunk)
        if written > limit:  # a member larger than it declared (a lying header)
            raise PayloadTooLargeError(f"model: the archive unpacks to over {limit:,} bytes",
                                       field="model", limit=limit)
        sink.write(chunk)
    return written


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
