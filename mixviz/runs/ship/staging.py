"""All-or-nothing checkpoint folders: written into a sibling ``.NAME.mixviz-partial-RUN``,
renamed into place only once verified; their files' sizes and sha256 (a *fingerprint*), the
check that a folder still holds them, a verified copy, and the room ``--out`` needs.

>>> partial_dir(Path("/ckpt/demo-w4"), "20261207-120000-abc123")
PosixPath('/ckpt/.demo-w4.mixviz-partial-20261207-120000-abc123')
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mixviz.errors import MixvizError

PARTIAL = ".mixviz-partial-"
ROOM_FACTOR = 2  # free space asked at submit: the predicted bytes × this (a copy, a spare)


def partial_dir(out: Path, run_id: str) -> Path:
    """Where ``run_id`` writes the checkpoint meant for ``out`` until it is verified."""
    return out.parent / f".{out.name}{PARTIAL}{run_id}"


def partial_runs(out: Path) -> dict[str, Path]:
    """The partial folders beside ``out``: ``{run id: folder}``."""
    prefix = f".{out.name}{PARTIAL}"
    try:
        found = [p for p in out.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return {}
    return {p.name[len(prefix) :]: p for p in found}


def _missing_parents(out: Path) -> list[Path]:
    """``out``'s ancestors that do not exist yet, nearest first."""
    missing, p = [], out.parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


@contextmanager
def staged(
    out: Path, run_id: str, may_publish: Callable[[], bool] = lambda: True
) -> Iterator[Path]:
    """Yield the partial folder to write into; when the body returns, rename it to ``out``
    (which must be absent or an empty folder) if ``may_publish()`` still says yes. On any
    failure the partial folder, and the parents made for it, are removed: ``out`` is left as
    it was."""
    created = _missing_parents(out)
    tmp = partial_dir(out, run_id)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        if not may_publish():
            raise MixvizError("the run stopped before its checkpoint was moved into place")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # nearest first: only the empty folders made for this run
            try:
                p.rmdir()
            except OSError:
                break
        raise


def publish(tmp: Path, out: Path) -> None:
    """Rename the verified ``tmp`` to ``out`` in one step (an empty ``out`` is replaced)."""
    try:
        os.rename(tmp, out)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise MixvizError(
                f"{out} was filled by something else while the checkpoint was verified: "
                "nothing was written there; choose a new --out"
            ) from None
        raise MixvizError(f"cannot move the checkpoint into {out}: {e.strerror or e}") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(folder: Path) -> dict[str, list]:
    """Every file under ``folder``: ``{relative path: [bytes, sha256]}``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): [p.stat().st_size, sha256(p)] for p in files}


def changed(folder: Path, files: dict[str, list], hashes: bool = True) -> str | None:
    """Why ``folder`` no longer holds exactly ``files`` (a :func:`fingerprint`), or None when
    it does. Without ``hashes`` only names and sizes are compared (quick)."""
    if not folder.is_dir():
        return f"{folder} is gone"
    if not files:
        return "its files were never fingerprinted (written by an older mixviz)"
    have = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    if have != set(files):
        diff = sorted(set(files) ^ have)
        return f"{folder} holds other files than were verified ({', '.join(diff[:3])})"
    for name, (size, digest) in files.items():
        path = folder / name
        if path.stat().st_size != size or (hashes and sha256(path) != digest):
            return f"{name} in {folder} changed since it was verified"
    return None


def copy_verified(src: Path, out: Path, files: dict[str, list], run_id: str) -> None:
    """Copy the checkpoint ``src`` (whose ``files`` were verified) to ``out``, all or nothing:
    into a partial folder, checked against ``files`` there, then renamed."""
    with staged(out, run_id) as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, tmp / name)
        why = changed(tmp, files)
        if why:
            raise MixvizError(f"the copy of {src} does not match what was verified: {why}")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_room(out: Path, predicted_bytes: float) -> None:
    """Refuse, at submit, an ``out`` that cannot be written, or whose disk has less free
    space than :data:`ROOM_FACTOR` × the checkpoint's predicted bytes."""
    base = nearest_existing(out.parent)
    if not base.is_dir():
        raise MixvizError(f"cannot write to {out}: {base} is not a folder")
    try:
        probe = tempfile.mkdtemp(dir=base, prefix=".mixviz-write-test-")
        os.rmdir(probe)
    except OSError as e:
        raise MixvizError(f"cannot write to {out}: {e.strerror or e} in {base}") from None
    need = ROOM_FACTOR * predicted_bytes
    free = shutil.disk_usage(base).free
    if free < need:
        raise MixvizError(
            f"not enough room for the checkpoint in {out}: {free / 2**20:.0f} MiB free on its "
            f"disk, it needs about {need / 2**20:.0f} MiB (the predicted "
            f"{predicted_bytes / 2**20:.0f} MiB × {ROOM_FACTOR})"
        )


def discard(run_id: str, spec: dict) -> None:
    """Remove the partial checkpoint folder of a run that was stopped (``spec``: its spec as
    the store keeps it); nothing for a run that writes none."""
    out = (spec.get("ship") or {}).get("out")
    if out:
        shutil.rmtree(partial_dir(Path(out), run_id), ignore_errors=True)


def discard_partials(out: Path, final_runs: Callable[[str], bool]) -> list[str]:
    """Remove the partial folders beside ``out`` left by runs that ended (cancelled, killed,
    lost): those ``final_runs(run id)`` says are over. Returns their run ids."""
    gone = []
    for run_id, folder in partial_runs(out).items():
        if final_runs(run_id):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(run_id)
    return gone
