"""The learning job: train the energy model on the store's DFT data and promote it if better."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker, job

from xtalloop.learn.mace_training import MaceTrainer
from xtalloop.workflows.outputs import EnergyModelTraining, GeneratorTraining

logger = logging.getLogger(__name__)


@dataclass
class EnergyModelTrainingMaker(Maker):
    """Train a MACE ensemble on every DFT relaxation in the store and register it.

    The parent is the prefilter's current model (``prefilter_model``, with
    ``"registry"`` resolved to the promoted model or ``base_model``). A MACE
    parent knowing all elements of the data is fine-tuned; any other parent
    is replaced by models trained from scratch. Both are tested on the same
    held-out structures; the new model is promoted only if its energy error
    is lower (:func:`~xtalloop.learn.registry.should_promote`).

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
        mace_run_train settings.
    ensemble_size
        Members of the ensemble.
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
    trainer: MaceTrainer = field(default_factory=MaceTrainer)
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
        foundation = getattr(parent, "paths", None)
        if foundation and not elements <= parent.elements:
            logger.info("parent %s lacks %s: training from scratch", parent_spec,
                        sorted(elements - parent.elements))
            foundation = None
        ensemble = self.trainer.train_ensemble(
            train, Path.cwd() / "energy_model", size=self.ensemble_size, seed=self.seed,
            parents=foundation)
        child = load_energy_model(str(ensemble))
        metrics = evaluate(child, holdout, align_on=train)
        parent_metrics = evaluate(parent, holdout, align_on=train)
        promoted, reason = should_promote(metrics, parent_metrics)
        with open_results(StoreConfig(**self.store)) as db:
            model_id = ModelRegistry(db).register(
                ensemble, parent=parent_id or parent_spec, metrics=metrics,
                parent_metrics=parent_metrics, promoted=promoted,
                settings_key=self.settings_key, fine_tuned=bool(foundation),
                training_structures=groups(train), holdout_structures=groups(holdout),
                n_frames={"train": len(train), "holdout": len(holdout)},
                elements=sorted(elements),
                trainer=self.trainer.settings(), ensemble_size=self.ensemble_size,
                seeds=[self.seed + i for i in range(self.ensemble_size)], run=self.run)
        logger.info("energy model %s: %s", model_id, reason)
        return EnergyModelTraining(
            model_id=model_id, parent=parent_id or parent_spec, promoted=promoted,
            reason=reason, fine_tuned=bool(foundation), metrics=metrics,
            parent_metrics=parent_metrics,
            n_frames={"train": len(train), "holdout": len(holdout)},
            n_structures={"train": len(groups(train)), "holdout": len(groups(holdout))},
        )


@dataclass
class GeneratorTrainingMaker(Maker):
    """Fine-tune the diffusion generator on the store's DFT-validated stable structures.

    Parameters
    ----------
    name
        Job name.
    store
        A dumped :class:`~xtalloop.config.StoreConfig`.
    checkpoint
        The parent checkpoint (the diffusion source the round sampled from): a
        path, or a ``store:sha256:<digest>`` reference to a file in ``store``.
    settings_key
        Only structures validated with these DFT settings are used.
    stable_within
        eV/atom above the DFT hull a structure may lie to be learned from.
    epochs, lr_factor, batch_size, seed, device
        Fine-tuning settings (learning rate = the parent's × ``lr_factor``).
    min_structures
        With fewer stable structures, nothing is trained.
    """

    name: str = "fine-tune generator"
    store: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
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
            ``final_loss``.
        """
        import json

        from pymatgen.core import Structure

        from xtalloop.config import StoreConfig
        from xtalloop.generators.diffusion import (
            DiffusionConfig,
            read_checkpoint,
            structures_to_dataset,
            train,
        )
        from xtalloop.store.files import FileStore, local_copy, ref
        from xtalloop.store.results import open_results

        store = StoreConfig(**self.store)
        parent_path = local_copy(self.checkpoint, store, suffix=".pt", kind="generators")
        parent = read_checkpoint(parent_path)
        max_atoms = int(parent.get("max_atoms") or 0)
        with open_results(store) as db:
            docs = [d for d in db.find_validated(settings_key=self.settings_key,
                                                 max_e_above_hull=self.stable_within)
                    if d["dft"]["converged"] and (not max_atoms or d["nsites"] <= max_atoms)]
        if len(docs) < self.min_structures:
            reason = (f"{len(docs)} stable structure(s) of at most {max_atoms} atoms in the "
                      f"store, {self.min_structures} needed")
            logger.info("generator not fine-tuned: %s", reason)
            return GeneratorTraining(parent=self.checkpoint, reason=reason,
                                     n_structures=len(docs))
        dataset = structures_to_dataset([Structure.from_dict(d["structure"]) for d in docs])
        config = DiffusionConfig.model_validate(parent["config"])
        config = config.model_copy(update={"train": config.train.model_copy(update={
            "epochs": self.epochs, "finetune_lr_factor": self.lr_factor,
            "batch_size": min(self.batch_size, len(docs)), "seed": self.seed,
            "device": self.device, "max_time_s": None, "save_every": 0})})
        path = train(config, dataset, Path.cwd() / "generator.pt",
                     finetune_from=parent_path, progress=False)
        log = json.loads(path.with_suffix(".log.json").read_text())
        history = log.get("history") or [{}]
        with FileStore(store) as files:
            digest = files.put(path, {"kind": "generator checkpoint", "parent": self.checkpoint})
        return GeneratorTraining(
            checkpoint=ref(digest), path=str(path), parent=self.checkpoint,
            reason=f"fine-tuned on {len(docs)} stable structures",
            n_structures=len(docs), structure_ids=[d["uuid"] for d in docs],
            final_loss=history[-1].get("loss"))
