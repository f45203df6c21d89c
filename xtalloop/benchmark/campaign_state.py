"""A campaign's working state as a few files that travel: save on one machine, restore on the next.

The full campaign (400 targets, four arms) takes several times longer than
one working session, and a session's machine does not outlive it. Its
resumability (:func:`~xtalloop.benchmark.campaign.run_campaign` resumes every
arm's loop from its store) only helps if the ``--work`` folder survives, so
this module packs that folder into compressed archives that can be copied,
or committed beside the campaign's results, and unpacks them into a fresh
``--work`` folder, where the same campaign command then resumes.

What is saved: the folder's own files (the targets, cached known-structure
energies, the base generator checkpoint when it lies there) as plain copies
under ``common/``, so that a version control system stores an unchanged one
once however often the state is saved; and per arm one ``<arm>.tar.xz`` of its
store (jobs, validated structures, registered models), run folders and
scores. An arm's archive grows by a few MB a round; one over
:data:`MAX_VOLUME_BYTES` is written as numbered volumes (``<arm>.tar.xz.000``,
``.001``, ...: the bytes of one archive cut in order), so no file outgrows what
a repository or a mail attachment takes. Files larger than
:data:`MAX_FILE_BYTES` are left out and named in the manifest, so nothing
is dropped silently. So are *superseded* generator checkpoints (a learning
arm's store keeps one of 6 MB per round): those a newer stored checkpoint
was fine-tuned from. Resuming needs only the newest;
the documents that name an older one keep its sha256, the manifest lists them.

A restored arm's energy models are not on the new machine's trust list
(:mod:`xtalloop.models.trust`), so its prefilter would refuse them: restoring
with ``trust_models`` puts their digests on the list, naming the state they
came from. The archive was checked against the manifest first, so what is
trusted is what was saved.

Save a campaign only while no arm writes to it (stopped, or paused with
``kill -STOP``): the archive is then what a kill at that moment would have
left, which the loop resumes from.

Restoring unpacks with :mod:`tarfile`'s ``data`` filter (no absolute paths,
no links out of the folder, no device files) and checks each archive's
sha256 against the manifest first, so a damaged or altered archive gives one
clear error instead of a half-restored campaign.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xtalloop.digest import file_sha256
from xtalloop.errors import DataError
from xtalloop.store.files import digest_of, is_ref

#: Version of the manifest's layout (2: an arm's archive as a list of volumes; 1 is read too).
STATE_FORMAT = 2
#: Files bigger than this are not packed (named in the manifest instead). Volumes keep
#: each saved file small, so this only guards against a runaway file: an arm's store
#: collection (job outputs) passes 20 MB after five rounds and must travel.
MAX_FILE_BYTES = 500 * 1024 * 1024
#: An arm's archive bigger than this is cut into volumes of at most this size.
MAX_VOLUME_BYTES = 20 * 1024 * 1024
MANIFEST = "manifest.json"
COMMON = "common"


def _stored_metadata(store_files: Path) -> list[dict[str, Any]]:
    """The metadata kept beside each blob of an embedded store's files folder."""
    out = []
    for path in sorted(store_files.glob("*/*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("sha256") == path.stem:
            out.append(meta)
    return out


def superseded_checkpoints(store_files: Path) -> set[str]:
    """Digests of stored generator checkpoints that a newer stored one was fine-tuned from."""
    metas = [m for m in _stored_metadata(store_files) if m.get("kind") == "generator checkpoint"]
    parents = {digest_of(m["parent"]) for m in metas
               if is_ref(m.get("parent")) and digest_of(m["parent"]) != m["sha256"]}
    return {m["sha256"] for m in metas} & parents


def _members(work: Path, part: str) -> tuple[list[Path], list[dict[str, Any]]]:
    """The files of one part (``common`` or an arm), and those left out (too big, superseded)."""
    if part == COMMON:
        files = [p for p in sorted(work.iterdir()) if p.is_file() and not p.name.startswith(".")]
    else:
        files = sorted(p for p in (work / part).rglob("*") if p.is_file())
    # the store keeps model files and checkpoints by their sha256; the copies a job left
    # in its run folder (generator.pt, a fine-tuned model) are not packed twice
    stored = {p.name for p in (work / part / "store" / "files").rglob("*") if p.is_file()} \
        if part != COMMON else set()
    old = superseded_checkpoints(work / part / "store" / "files") if part != COMMON else set()
    kept, skipped = [], []
    for path in files:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            skipped.append({"path": str(path.relative_to(work)), "bytes": size,
                            "why": "over the size limit"})
        elif path.name in old and path.parent.parent.name == "files":
            skipped.append({"path": str(path.relative_to(work)), "bytes": size,
                            "why": "superseded generator checkpoint"})
        elif (stored and size > 100_000 and "store" not in path.relative_to(work).parts
              and file_sha256(path) in stored):
            continue  # a run folder's copy of a file the store holds
        else:
            kept.append(path)
    return kept, skipped


def _write_volumes(archive: Path, part: str, dest: Path,
                   volume_bytes: int) -> list[dict[str, Any]]:
    """Move ``archive`` into ``dest`` as one file or numbered volumes; drop the part's old ones."""
    size = archive.stat().st_size
    old = [p for p in dest.glob(f"{part}.tar.xz*") if p.name != archive.name]
    if size <= volume_bytes:
        names = [f"{part}.tar.xz"]
        archive.replace(dest / names[0])
    else:
        names = [f"{part}.tar.xz.{i:03d}" for i in range(-(-size // volume_bytes))]
        with archive.open("rb") as whole:
            for name in names:
                partial = dest / f".{name}.partial"
                partial.write_bytes(whole.read(volume_bytes))
                partial.replace(dest / name)
        archive.unlink()
    for stale in old:
        if stale.name not in names:
            stale.unlink()
    return [{"name": n, "sha256": file_sha256(dest / n), "bytes": (dest / n).stat().st_size}
            for n in names]


def _volumes(info: dict[str, Any]) -> list[dict[str, Any]]:
    """An arm's volumes from its manifest entry (format 1 named one ``archive``)."""
    if "volumes" in info:
        return info["volumes"]
    return [{"name": info["archive"], "sha256": info["sha256"], "bytes": info["bytes"]}]


class _Joined(io.RawIOBase):
    """The volumes of one archive read as one stream, in order."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._open = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._open is None:
                if not self._paths:
                    return 0
                self._open = self._paths.pop(0).open("rb")
            n = self._open.readinto(buffer)
            if n:
                return n
            self._open.close()
            self._open = None

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
        super().close()


def save_state(work: str | Path, dest: str | Path, arms: Sequence[str] | None = None,
               note: str = "", volume_bytes: int = MAX_VOLUME_BYTES) -> dict[str, Any]:
    """Pack ``work`` into ``dest`` (``common/``, ``<arm>.tar.xz``, ``manifest.json``).

    Parameters
    ----------
    work
        A campaign's ``--work`` folder (holds ``targets.json``).
    dest
        Folder for the archives; archives of the same parts are replaced.
    arms
        Arms to pack (default: every arm folder in ``work``).
    note
        Free text kept in the manifest (which session, which rounds).
    volume_bytes
        An arm's archive bigger than this is cut into volumes of this size.

    Returns
    -------
    dict
        The manifest written.
    """
    work, dest = Path(work), Path(dest)
    if not (work / "targets.json").is_file():
        raise DataError(f"{work} holds no campaign (no targets.json)")
    if arms is None:
        arms = sorted(p.name for p in work.iterdir() if p.is_dir() and (p / "store").exists())
    missing = [a for a in arms if not (work / a).is_dir()]
    if missing:
        raise DataError(f"{work} has no arm {missing[0]!r}")
    dest.mkdir(parents=True, exist_ok=True)
    old = dest / MANIFEST
    manifest = json.loads(old.read_text()) if old.is_file() else {"parts": {}}
    manifest.update({"format": STATE_FORMAT, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "note": note})
    for part in (COMMON, *arms):
        files, skipped = _members(work, part)
        info = {"files": len(files), "unpacked_bytes": sum(p.stat().st_size for p in files),
                "left_out": skipped}
        if part == COMMON:
            folder = dest / COMMON
            folder.mkdir(exist_ok=True)
            for stale in folder.iterdir():
                if stale.name not in {p.name for p in files}:
                    stale.unlink()
            for path in files:
                partial = folder / f".{path.name}.partial"
                shutil.copyfile(path, partial)
                partial.replace(folder / path.name)
            info.update(copies={p.name: file_sha256(p) for p in files},
                        bytes=info["unpacked_bytes"])
        else:
            partial = dest / f".{part}.tar.xz.partial"
            with tarfile.open(partial, "w:xz") as tar:
                for path in files:
                    tar.add(path, arcname=str(path.relative_to(work)), recursive=False)
            volumes = _write_volumes(partial, part, dest, volume_bytes)
            info.update(volumes=volumes, bytes=sum(v["bytes"] for v in volumes))
        manifest["parts"][part] = info
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def energy_models(work: str | Path, arm: str) -> dict[str, str]:
    """The energy-model files an arm's store holds: ``{sha256: model id}``."""
    files = Path(work) / arm / "store" / "files"
    return {m["sha256"]: str(m.get("model_id", "?")) for m in _stored_metadata(files)
            if m.get("kind") == "energy model"}


def restore_state(src: str | Path, work: str | Path, arms: Sequence[str] | None = None,
                  replace: bool = False, trust_models: bool = False) -> list[str]:
    """Unpack a saved state into ``work``; return the parts restored.

    An arm whose folder already exists in ``work`` is refused unless
    ``replace`` (its folder is then removed first): restoring over a live
    store would mix two histories. With ``trust_models`` the restored arms'
    energy models go on this machine's trust list (see the module's text).

    Raises
    ------
    DataError
        No manifest, an unknown format, a missing or altered archive, or an
        arm already present.
    """
    src, work = Path(src), Path(work)
    path = src / MANIFEST
    if not path.is_file():
        raise DataError(f"{src}: no {MANIFEST}; not a saved campaign state")
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in (1, STATE_FORMAT):
        raise DataError(f"{path}: state format {manifest.get('format')!r}, this xtalloop "
                        f"reads 1 to {STATE_FORMAT}")
    parts = manifest["parts"]
    chosen = [p for p in parts if p != COMMON] if arms is None else list(arms)
    unknown = [a for a in chosen if a not in parts]
    if unknown:
        raise DataError(f"{src} holds no arm {unknown[0]!r} (it has: "
                        f"{', '.join(p for p in parts if p != COMMON)})")
    for name, digest in parts[COMMON]["copies"].items():  # check all before unpacking any
        copy = src / COMMON / name
        if Path(name).name != name or not copy.is_file() or file_sha256(copy) != digest:
            raise DataError(f"{copy}: missing or not the file the manifest names "
                            "(sha256 differs)")
    for part in chosen:
        for volume in _volumes(parts[part]):
            archive = src / volume["name"]
            if (Path(volume["name"]).name != volume["name"] or not archive.is_file()
                    or file_sha256(archive) != volume["sha256"]):
                raise DataError(f"{archive}: missing or not the archive the manifest names "
                                "(sha256 differs)")
    present = [a for a in chosen if (work / a).exists()]
    if present and not replace:
        raise DataError(f"{work / present[0]} exists: restore into an empty --work folder, "
                        "or pass --replace to drop it")
    work.mkdir(parents=True, exist_ok=True)
    for arm in present:
        shutil.rmtree(work / arm)
    for name in parts[COMMON]["copies"]:
        shutil.copyfile(src / COMMON / name, work / name)
    for part in chosen:
        joined = _Joined([src / v["name"] for v in _volumes(parts[part])])
        with joined, tarfile.open(fileobj=joined, mode="r|xz") as tar:
            tar.extractall(work, filter="data")
        if trust_models:
            from xtalloop.models import trust

            for digest, model_id in energy_models(work, part).items():
                trust.add([digest], f"campaign state {src.resolve()}: arm {part}, {model_id}")
    return [COMMON, *chosen]
