"""The learning job: train the energy model on the store's DFT data and promote it if better."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker, job

from xtalloop.learn.chgnet_finetune import ChgnetFinetuner
from xtalloop.learn.mace_training import MaceTrainer
from xtalloop.workflows.outputs import EnergyModelTraining, GeneratorTraining

logger = logging.getLogger(__name__)


@dataclass
class EnergyModelTrainingMaker(Maker):
    """Train an energy model on every DFT relaxation in the store and register it.

    With a :class:`~xtalloop.learn.chgnet_finetune.ChgnetFinetuner` as ``trainer``,
    pretrained CHGNet is fine-tuned (one model). With a MACE trainer, the
    parent is the prefilter's current model (``prefilter_model``, with
    ``"registry"`` resolved to the promoted model or ``base_model``). A MACE
    parent knowing all elements of the data is fine-tuned; any other parent
    is replaced by models trained from scratch. Both are tested on the same
    held-out structures; the new model is promoted only if its energy error
    is lower and its hull F1 no lower
    (:func:`~xtalloop.learn.registry.should_promote`).

    Parameters
    ----------
    name
        Job name.
    store
        A dumped :class:`~xtalloop.config.StoreConfig`: DFT data and registry.
    settings_key
        The DFT settings whose results are used (one energy scale).
    prefilter_model, base_model
        The prefilter's model setting and its fallback.
    trainer
        mace_run_train settings, or a CHGNet fine-tuning's.
    ensemble_size
        Members of a MACE ensemble (a fine-tuned CHGNet is one model).
    holdout_fraction
        Share of structures held out for testing (fixed per structure).
    max_frames_per_relaxation
        Ionic steps taken from each relaxation.
    min_structures
        With fewer DFT structures in the store, nothing is trained.
    seed
        Seed of the first member (member ``i`` uses ``seed + i``).
    run
        ``{"id", "name"}`` of the run, recorded with the model.
    """

    name: str = "train energy model"
    store: dict[str, Any] = field(default_factory=dict)
    settings_key: str = ""
    prefilter_model: str = "chgnet"
    base_model: str = "chgnet"
    trainer: MaceTrainer | ChgnetFinetuner = field(default_factory=MaceTrainer)
    ensemble_size: int = 3
    holdout_fraction: float = 0.2
    max_frames_per_relaxation: int = 8
    min_structures: int = 4
    seed: int = 0
    run: dict[str, Any] = field(default_factory=dict)

    @job(output_schema=EnergyModelTraining)
    def make(self, after: Any = None) -> EnergyModelTraining:
        """Train, test and register; ``after`` only orders the job after the validations.

        Returns
        -------
        EnergyModelTraining
            ``model_id`` (``None`` when skipped), ``parent``, ``promoted``,
            ``reason``, ``metrics``, ``parent_metrics``, ``n_frames`` and
            ``n_structures`` (train/holdout).
        """
        from xtalloop.config import StoreConfig
        from xtalloop.learn.dataset import (
            covered,
            elements_of,
            frames_from_store,
            groups,
            split_frames,
        )
        from xtalloop.learn.metrics import evaluate
        from xtalloop.learn.registry import ModelRegistry, resolve_model, should_promote
        from xtalloop.models.energy_model import load_energy_model
        from xtalloop.store.results import open_results

        with open_results(StoreConfig(**self.store)) as db:
            frames = frames_from_store(db, self.settings_key, self.max_frames_per_relaxation)
        n_structures = len([g for g in groups(frames) if not g.startswith("reference:")])
        if n_structures < self.min_structures:
            reason = (f"{n_structures} DFT structure(s) in the store, "
                      f"{self.min_structures} needed")
            logger.info("energy model not trained: %s", reason)
            return EnergyModelTraining(reason=reason)

        train, holdout = split_frames(frames, self.holdout_fraction)
        if not train:  # e.g. every structure held out: nothing left to learn from
            reason = f"no training frames once {len(groups(holdout))} structure(s) are held out"
            logger.info("energy model not trained: %s", reason)
            return EnergyModelTraining(reason=reason)
        holdout = covered(holdout, elements_of(train))  # a new element cannot be tested yet
        parent_spec, parent_id = resolve_model(self.prefilter_model, self.base_model, self.store)
        parent = load_energy_model(parent_spec)
        elements = elements_of(train)
        chgnet = isinstance(self.trainer, ChgnetFinetuner)
        members = 1 if chgnet else self.ensemble_size
        if chgnet:  # always from the pretrained weights, on all the DFT data
            ensemble = Path.cwd() / "energy_model"
            self.trainer.train(train, ensemble, seed=self.seed)
            fine_tuned = True
        else:
            foundation = getattr(parent, "paths", None)
            if foundation and not elements <= parent.elements:
                logger.info("parent %s lacks %s: training from scratch", parent_spec,
                            sorted(elements - parent.elements))
                foundation = None
            ensemble = self.trainer.train_ensemble(
                train, Path.cwd() / "energy_model", size=self.ensemble_size, seed=self.seed,
                parents=foundation)
            fine_tuned = bool(foundation)
        child = load_energy_model(str(ensemble))
        metrics = evaluate(child, holdout, align_on=train)
        parent_metrics = evaluate(parent, holdout, align_on=train)
        promoted, reason = should_promote(metrics, parent_metrics)
        with open_results(StoreConfig(**self.store)) as db:
            model_id = ModelRegistry(db).register(
                ensemble, parent=parent_id or parent_spec, metrics=metrics,
                parent_metrics=parent_metrics, promoted=promoted,
                settings_key=self.settings_key, fine_tuned=fine_tuned,
                base="chgnet" if chgnet else None,
                training_structures=groups(train), holdout_structures=groups(holdout),
                n_frames={"train": len(train), "holdout": len(holdout)},
                elements=sorted(elements),
                trainer=self.trainer.settings(),
                ensemble_size=members, seeds=[self.seed + i for i in range(members)],
                run=self.run)
        logger.info("energy model %s: %s", model_id, reason)
        return EnergyModelTraining(
            model_id=model_id, parent=parent_id or parent_spec, promoted=promoted,
            reason=reason, fine_tuned=fine_tuned, base="chgnet" if chgnet else None,
            metrics=metrics,
            parent_metrics=parent_metrics,
            n_frames={"train": len(train), "holdout": len(holdout)},
            n_structures={"train": len(groups(train)), "holdout": len(groups(holdout))},
        )


@dataclass
class _Tuned:
    """A fine-tuned checkpoint written in the job's folder, before it goes to the store."""

    path: Path
    structure_ids: list[str]
    reason: str
    final_loss: float | None = None


@dataclass
class GeneratorTrainingMaker(Maker):
    """Fine-tune the round's learned generator on the store's DFT-validated stable structures.

    The parent checkpoint's format picks the generator: a Wyckoff checkpoint
    (``xtalloop-wyckoff/1``) is fine-tuned on the Wyckoff descriptions of the
    structures (those PyXtal cannot describe are skipped and counted) and keeps
    its weights unless the held-out loss improves
    (:mod:`xtalloop.learn.wyckoff_finetune`); any other is read as a diffusion
    checkpoint. Either way the new checkpoint goes to the store's file store.

    Parameters
    ----------
    name
        Job name.
    store
        A dumped :class:`~xtalloop.config.StoreConfig`.
    checkpoint
        The parent checkpoint (the diffusion or Wyckoff source the round
        sampled from): a path, or a ``store:sha256:<digest>`` reference to a
        file in ``store``; ``None`` (or empty): the Wyckoff checkpoint shipped
        with xtalloop, the default of a ``wyckoff`` source.
    settings_key
        Only structures validated with these DFT settings are used.
    stable_within
        eV/atom above the DFT hull a structure may lie to be learned from.
    epochs, lr_factor, batch_size, seed, device
        Fine-tuning settings (learning rate = the parent's × ``lr_factor``).
    min_structures
        With fewer stable structures, nothing is trained (a Wyckoff model needs
        two: one is held out to decide whether the new weights are better).
    """

    name: str = "fine-tune generator"
    store: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    settings_key: str = ""
    stable_within: float = 0.1
    epochs: int = 20
    lr_factor: float = 0.1
    batch_size: int = 16
    min_structures: int = 2
    seed: int = 0
    device: str = "cpu"

    @job(output_schema=GeneratorTraining)
    def make(self, after: Any = None) -> GeneratorTraining:
        """Fine-tune; ``after`` only orders the job after the round's validations.

        Returns
        -------
        GeneratorTraining
            ``checkpoint`` (``None`` when skipped): the new checkpoint as a
            reference ``store:sha256:<digest>`` to the store's file store, so
            the next round reads it on any node, with ``path``, where it was
            written here (for information: this job's folder may be gone);
            ``parent``, ``reason``, ``n_structures``, ``structure_ids`` and
            ``final_loss`` (diffusion: the last epoch's training loss; Wyckoff:
            the held-out loss of the weights kept).
        """
        from xtalloop.config import StoreConfig
        from xtalloop.learn.wyckoff_finetune import is_wyckoff_checkpoint, wyckoff_parent
        from xtalloop.store.files import FileStore, local_copy, ref

        store = StoreConfig(**self.store)
        parent = wyckoff_parent(self.checkpoint)
        parent_path = local_copy(parent, store, suffix=".pt", kind="generators")
        kind = "wyckoff" if is_wyckoff_checkpoint(parent_path) else "diffusion"
        tune = self._wyckoff if kind == "wyckoff" else self._diffusion
        tuned = tune(store, parent, parent_path)
        if isinstance(tuned, GeneratorTraining):  # skipped
            return tuned
        with FileStore(store) as files:
            digest = files.put(tuned.path, {"kind": "generator checkpoint", "generator": kind,
                                            "parent": parent})
        return GeneratorTraining(
            checkpoint=ref(digest), path=str(tuned.path), parent=parent, reason=tuned.reason,
            n_structures=len(tuned.structure_ids), structure_ids=tuned.structure_ids,
            final_loss=tuned.final_loss)

    def _stable(self, store: Any, max_atoms: int = 0) -> list[dict[str, Any]]:
        """The converged validated structures within ``stable_within`` of the hull."""
        from xtalloop.store.results import open_results

        with open_results(store) as db:
            return [d for d in db.find_validated(settings_key=self.settings_key,
                                                 max_e_above_hull=self.stable_within)
                    if d["dft"]["converged"] and (not max_atoms or d["nsites"] <= max_atoms)]

    def _diffusion(self, store: Any, parent: str, parent_path: str) -> _Tuned | GeneratorTraining:
        import json

        from pymatgen.core import Structure

        from xtalloop.generators.diffusion import (
            DiffusionConfig,
            read_checkpoint,
            structures_to_dataset,
            train,
        )

        stored = read_checkpoint(parent_path)
        max_atoms = int(stored.get("max_atoms") or 0)
        docs = self._stable(store, max_atoms)
        if len(docs) < self.min_structures:
            reason = (f"{len(docs)} stable structure(s) of at most {max_atoms} atoms in the "
                      f"store, {self.min_structures} needed")
            logger.info("generator not fine-tuned: %s", reason)
            return GeneratorTraining(parent=parent, reason=reason, n_structures=len(docs))
        dataset = structures_to_dataset([Structure.from_dict(d["structure"]) for d in docs])
        config = DiffusionConfig.model_validate(stored["config"])
        config = config.model_copy(update={"train": config.train.model_copy(update={
            "epochs": self.epochs, "finetune_lr_factor": self.lr_factor,
            "batch_size": min(self.batch_size, len(docs)), "seed": self.seed,
            "device": self.device, "max_time_s": None, "save_every": 0})})
        path = train(config, dataset, Path.cwd() / "generator.pt",
                     finetune_from=parent_path, progress=False)
        log = json.loads(path.with_suffix(".log.json").read_text())
        history = log.get("history") or [{}]
        return _Tuned(path, [d["uuid"] for d in docs],
                      f"fine-tuned on {len(docs)} stable structures",
                      history[-1].get("loss"))

    def _wyckoff(self, store: Any, parent: str, parent_path: str) -> _Tuned | GeneratorTraining:
        from pymatgen.core import Structure

        from xtalloop.generators.diffusion.train import resolve_device
        from xtalloop.generators.wyckoff.train import write_log
        from xtalloop.learn.wyckoff_finetune import (
            WyckoffFinetune,
            describe_structures,
            finetune_wyckoff,
            outcome,
            parent_settings,
        )

        max_sites = parent_settings(parent_path)[0]
        docs = self._stable(store)
        described = describe_structures(
            ((d["uuid"], Structure.from_dict(d["structure"])) for d in docs), max_sites)
        skipped = (f" ({described.n_skipped} without a usable Wyckoff description skipped)"
                   if described.n_skipped else "")
        needed = max(2, self.min_structures)
        if len(described.crystals) < needed:
            reason = (f"{len(described.crystals)} stable structure(s) with a Wyckoff "
                      f"description in the store{skipped}, {needed} needed")
            logger.info("generator not fine-tuned: %s", reason)
            return GeneratorTraining(parent=parent, reason=reason,
                                     n_structures=len(described.crystals))
        path = Path.cwd() / "generator.pt"
        log = finetune_wyckoff(
            parent_path, described.crystals, path,
            WyckoffFinetune(epochs=self.epochs, lr_factor=self.lr_factor,
                            batch_size=self.batch_size, seed=self.seed,
                            device=str(resolve_device(self.device))),
            metadata={"parent": {"checkpoint": parent},
                      "structure_ids": described.ids, "skipped_ids": described.skipped})
        write_log(log, path.with_suffix(".log.json"))
        return _Tuned(path, described.ids,
                      f"fine-tuned on {len(described.crystals)} stable structures{skipped}; "
                      f"{outcome(log)}", log.get("best_val_loss"))
