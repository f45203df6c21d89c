"""A versioned registry of trained energy models, kept in the results store.

Each entry of the ``models`` collection records a model's id (``mace-<n>`` or ``chgnet-<n>``),
its parent (another id, or a base model such as ``chgnet``), the DFT settings
key and structures it was trained on, its trainer settings, its metrics and its
parent's on the same held-out data, and whether it was promoted. The model
files themselves are blobs of the store's file store (:mod:`xtalloop.store.files`:
GridFS on MongoDB, a files folder embedded), recorded by name, sha256 and
size, so a model travels with the store to wherever the next prefilter job
runs; :meth:`ModelRegistry.fetch` writes them back to a local cache folder,
checking their sha256. Registries written before kept base64 chunks in a
``model_files`` collection: those are still read
(:meth:`ModelRegistry.stored_files`). Only xtalloop's native model format is
stored (loading it runs no code from the files), and a machine uses a stored
model only if its digests are on its own trust list
(:mod:`xtalloop.models.trust`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from xtalloop.errors import XtalloopError
from xtalloop.store.results import ResultsDB, now

MODELS = "models"
MODEL_FILES = "model_files"
"""Where registries written before the file store kept base64 chunks (still read)."""
REGISTRY_SPEC = "registry"
"""The ``prefilter.model`` value that means: the registry's promoted model."""


def cache_dir() -> Path:
    """Where fetched model files are kept (``$XTALLOOP_CACHE`` or ``~/.cache/xtalloop``)."""
    root = os.environ.get("XTALLOOP_CACHE") or Path.home() / ".cache" / "xtalloop"
    return Path(root).expanduser() / "models"


class ModelRegistry:
    """Energy models trained by the loop, in one results store.

    Parameters
    ----------
    db
        The open results database.
    """

    def __init__(self, db: ResultsDB) -> None:
        self.db = db

    def register(self, model_dir: Path, *, parent: str, metrics: dict[str, Any],
                 parent_metrics: dict[str, Any], promoted: bool, **record: Any) -> str:
        """Store the native model files of ``model_dir`` and their record; returns the new id.

        Only xtalloop's native formats are stored (``*.mace.json`` and their
        ``*.mace.pt`` weights, :mod:`xtalloop.models.mace_format`; a fine-tuned
        CHGNet's ``*.chgnet.json`` and ``*.chgnet.pt``,
        :mod:`xtalloop.learn.chgnet_finetune`), never a
        pickled ``.model``: whoever fetches a model from a shared store must be
        able to load it without running code from it. ``record`` holds the
        rest of the entry: ``settings_key``, ``training_structures``,
        ``n_frames``, ``trainer``, ``seeds``, ``run``…
        """
        from xtalloop.learn import chgnet_finetune
        from xtalloop.models.mace_format import SUFFIX, weights_path

        kind, descriptions = "mace", sorted(Path(model_dir).glob(f"*{SUFFIX}"))
        weights_of = weights_path
        if not descriptions:
            kind = "chgnet"
            descriptions = sorted(Path(model_dir).glob(f"*{chgnet_finetune.SUFFIX}"))
            weights_of = chgnet_finetune.weights_file
        if not descriptions:
            raise XtalloopError(f"no native model files (*{SUFFIX} or "
                                f"*{chgnet_finetune.SUFFIX}) in {model_dir}")
        files = sorted([*descriptions, *(weights_of(p) for p in descriptions)])
        model_id = f"{kind}-{self._next_number()}"
        entries = []
        with self._files() as store:
            for path in files:
                data = path.read_bytes()
                digest = store.put(data, {"kind": "energy model", "model_id": model_id,
                                          "name": path.name})
                entries.append({"name": path.name, "sha256": digest, "bytes": len(data)})
        self.db.store(MODELS).update([{
            "model_id": model_id, "number": int(model_id.split("-")[1]), "kind": kind,
            "parent": parent, "files": entries, "metrics": metrics,
            "parent_metrics": parent_metrics, "promoted": promoted, "created_at": now(),
            "promotion": self._next_promotion() if promoted else None,
            **record}], key="model_id")
        return model_id

    def get(self, model_id: str) -> dict[str, Any]:
        """The record of ``model_id``.

        Raises
        ------
        XtalloopError
            If there is no such model.
        """
        doc = self.db.store(MODELS).query_one({"model_id": model_id})
        if doc is None:
            raise XtalloopError(f"no model {model_id!r} in the registry")
        return {k: v for k, v in doc.items() if k != "_id"}

    def all(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        docs = self.db.store(MODELS).query({})
        return sorted(({k: v for k, v in d.items() if k != "_id"} for d in docs),
                      key=lambda d: d["number"])

    def promoted(self, settings_key: str | None = None) -> dict[str, Any] | None:
        """The most recently promoted model (for ``settings_key``, if given), or ``None``."""
        query: dict[str, Any] = {"promoted": True}
        if settings_key is not None:
            query["settings_key"] = settings_key
        docs = list(self.db.store(MODELS).query(query))
        if not docs:
            return None
        doc = max(docs, key=lambda d: d["promotion"])
        return {k: v for k, v in doc.items() if k != "_id"}

    def promote(self, model_id: str, reason: str = "promoted by hand") -> None:
        """Make ``model_id`` the prefilter's model from now on (it becomes the newest promoted)."""
        doc = self.get(model_id)
        doc.update(promoted=True, promotion=self._next_promotion(), promotion_note=reason,
                   promoted_at=now())
        self.db.store(MODELS).update([doc], key="model_id")

    def fetch(self, model_id: str, into: Path | None = None) -> Path:
        """The folder holding ``model_id``'s files (written there from the store if needed).

        Anyone who can write to a shared store can put files there, so a
        model is fetched only if every file's sha256 is on this machine's
        trust list (:mod:`xtalloop.models.trust`: models trained here, or
        added by ``xtalloop model trust ID``) and the stored bytes have
        exactly that digest.

        Raises
        ------
        UntrustedModelError
            If a file's digest is not on the local trust list.
        XtalloopError
            If a stored file is incomplete or its sha256 does not match.
        """
        from xtalloop.models.trust import UntrustedModelError, how_to_trust, trusted

        record = self.get(model_id)
        known = trusted()
        if not record.get("files") or any(f.get("sha256") not in known for f in record["files"]):
            raise UntrustedModelError(
                f"model {model_id} in the store is not on this machine's trust list; after "
                f"reviewing it (xtalloop model list) run `{how_to_trust(model_id)}` with the "
                "same store options")
        # ids are per store: the folder name carries the content's digest too, so two
        # stores' "mace-1" never share a folder (nor a cached loaded model)
        digest = hashlib.sha256("".join(f["sha256"] for f in record["files"]).encode())
        folder = (into or cache_dir()) / f"{model_id}-{digest.hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        names = [f["name"] for f in record["files"]]
        if any(not isinstance(n, str) or Path(n).name != n or n.startswith(".") for n in names):
            raise XtalloopError(f"model {model_id}: a stored file name is not a plain file name")
        cached = all((folder / f["name"]).is_file() and hashlib.sha256(
            (folder / f["name"]).read_bytes()).hexdigest() == f["sha256"] for f in record["files"])
        if cached:
            return folder
        from xtalloop.store.files import write_atomically

        for name, data in self.stored_files(model_id).items():
            # a private temporary name: parallel jobs may fetch the same model at once
            write_atomically(folder / name, data)
        return folder

    def stored_files(self, model_id: str) -> dict[str, bytes]:
        """Each stored file of ``model_id`` by name, checked against its record.

        Raises
        ------
        XtalloopError
            If a stored file is missing, incomplete or its sha256 does not match.
        """
        from xtalloop.errors import StoreError

        out = {}
        with self._files() as store:
            for entry in self.get(model_id)["files"]:
                if "chunks" in entry:  # written before the file store: base64 chunks
                    out[entry["name"]] = self._chunked_file(model_id, entry)
                    continue
                try:
                    out[entry["name"]] = store.get(entry["sha256"])
                except StoreError as exc:
                    raise XtalloopError(f"model {model_id}: stored file {entry['name']}: "
                                        f"{exc}") from None
        return out

    def _chunked_file(self, model_id: str, entry: dict[str, Any]) -> bytes:
        """A file of a registry written before the file store, from its base64 chunks."""
        chunks = sorted(self.db.store(MODEL_FILES).query(
            {"model_id": model_id, "file": entry["name"]}), key=lambda d: d["chunk"])
        data = b"".join(base64.b64decode(c["data"]) for c in chunks)
        if len(chunks) != entry["chunks"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise XtalloopError(f"model {model_id}: stored file {entry['name']} is damaged "
                                f"({len(chunks)}/{entry['chunks']} chunks)")
        return data

    def _files(self) -> Any:
        """The store's file store (:class:`~xtalloop.store.files.FileStore`), to use in ``with``."""
        from xtalloop.store.files import FileStore

        return FileStore(self.db.config, create=self.db.create)

    def trust(self, model_id: str) -> list[str]:
        """Put the digests of ``model_id``'s stored files on this machine's trust list.

        Only for a model the user has reviewed: from then on :meth:`fetch`
        hands it out here. Returns the digests.
        """
        from xtalloop.models.trust import add

        digests = [hashlib.sha256(data).hexdigest()
                   for data in self.stored_files(model_id).values()]
        add(digests, source=f"registry model {model_id}")
        return digests

    def _next_promotion(self) -> int:
        """The next promotion number, allocated atomically (two promotions never share one)."""
        docs = self.db.store(MODELS).query({"promoted": True}, properties=["promotion"])
        floor = max((d["promotion"] or 0 for d in docs), default=0)
        return self.db.next_counter("model_promotion", floor)

    def _next_number(self) -> int:
        """The next model number, allocated atomically: two trainings never both get ``mace-3``.

        ``floor`` covers registries written before the counter existed.
        """
        numbers = [d["number"] for d in self.db.store(MODELS).query({}, properties=["number"])]
        return self.db.next_counter("model_number", max(numbers, default=0))


def should_promote(metrics: dict[str, Any], parent_metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether a new model replaces its parent, and why.

    The new model must have been tested on held-out DFT data, its energy
    error there (after per-element alignment) must be lower than the parent's
    on the same frames, and its hull decision (F1 of "stable within
    0.1 eV/atom") no worse, where both have one: a model that fits energies
    better but calls stable structures unstable would pick worse. A parent
    without metrics (nothing held out when it was trained) loses to any
    tested model.
    """
    if not metrics.get("n_frames"):
        return False, "no held-out DFT data to test the new model on"
    new, old = metrics.get("energy_mae"), parent_metrics.get("energy_mae")
    if old is None:
        return True, "the parent could not be tested"
    if new >= old:
        return False, f"energy MAE {new:.1f} >= parent's {old:.1f} meV/atom: the parent stays"
    f1, parent_f1 = metrics.get("f1"), parent_metrics.get("f1")
    if f1 is None or parent_f1 is None:  # no stable/unstable call to compare
        return True, f"energy MAE {new:.1f} < parent's {old:.1f} meV/atom"
    if f1 < parent_f1:
        return False, (f"energy MAE {new:.1f} < parent's {old:.1f} meV/atom but hull F1 "
                       f"{f1:.3f} < parent's {parent_f1:.3f}: the parent stays")
    return True, (f"energy MAE {new:.1f} < parent's {old:.1f} meV/atom, "
                  f"hull F1 {f1:.3f} >= {parent_f1:.3f}")


def resolve_model(spec: str, base_model: str, store: dict[str, Any] | None,
                  elements: list[str] | None = None) -> tuple[str, str | None]:
    """What a prefilter's model setting loads: ``(spec for load_energy_model, registry id)``.

    ``"registry"`` becomes the folder of the newest promoted model (fetched
    from ``store``, a dumped :class:`~xtalloop.config.StoreConfig`), or
    ``base_model`` while the registry has none or while the promoted model
    does not serve every one of ``elements`` (:func:`serves`); any other spec is returned
    as is with no registry id.
    """
    if spec != REGISTRY_SPEC:
        return spec, None
    if store is None:
        raise XtalloopError("model 'registry' needs a store to read the registry from")
    from xtalloop.config import StoreConfig
    from xtalloop.store.results import open_results

    with open_results(StoreConfig(**store)) as db:
        registry = ModelRegistry(db)
        doc = registry.promoted()
        if doc is None:
            return base_model, None
        if elements and not serves(doc, elements):
            return base_model, None  # e.g. a quaternary with an element no round has seen
        return str(registry.fetch(doc["model_id"])), doc["model_id"]


def serves(doc: dict[str, Any], elements: list[str]) -> bool:
    """Whether the registry model ``doc`` may prefilter a composition of ``elements``.

    A model trained from scratch (MACE) knows only the elements of its
    training data. CHGNet fine-tuned with replay keeps the pretrained model's
    periodic table: replay holds it to its parent on structures of other
    elements (benchmarks/README.md, "Replay"), and an element it never saw in
    DFT keeps the parent's reference energy, which cancels in energies above
    the hull (the references are relaxed with the same model). Without replay,
    a fine-tuned CHGNet drifted on other elements, so it is limited as MACE is.
    """
    trained = doc.get("elements")
    if not trained or set(elements) <= set(trained):
        return True
    trainer = doc.get("trainer") or {}
    return doc.get("kind") == "chgnet" and bool(
        trainer.get("replay_neighbours") or trainer.get("replay_library"))
