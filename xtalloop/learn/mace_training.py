"""Train or fine-tune MACE models, and ensembles of them, with mace's own trainer.

:class:`MaceTrainer` writes the frames to extended XYZ and runs
``mace_run_train`` in a subprocess (:mod:`xtalloop.learn.mace_run`): from
scratch, or from a parent model's weights (``--foundation_model``, plain
fine-tuning) when the parent is a MACE model that knows every element of the
data. The subprocess saves the trained model in xtalloop's native format
(``<name>.mace.json`` plus weights, :mod:`xtalloop.models.mace_format`), which
loads without unpickling, and the new files go on this machine's trust list
(:mod:`xtalloop.models.trust`). :meth:`MaceTrainer.train_ensemble` trains several members with
different seeds (and, with ``bootstrap``, on resamples of the structures);
their spread is the uncertainty the picker can explore. The members share one
set of per-element reference energies (E0s), fitted on all the frames.

Both choices are measured (``benchmarks/README.md``, 34 GPAW structures,
fine-tuned): fitted on each resample, an element seen in one or two
compositions got references 10 eV apart and the ensemble's held-out energy
error was 535 meV/atom; shared E0s brought it to 360, and members on all the
structures (seeds only) to 178. A resample leaves out a third of the
structures, and with a few dozen that is the only compound of some element.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from xtalloop.errors import XtalloopError
from xtalloop.learn.dataset import groups
from xtalloop.models.mace_format import (
    PICKLE_SUFFIXES,
    SUFFIX,
    is_native,
    pickle_refused,
    read_description,
    weights_path,
)
from xtalloop.models.trust import add_files

logger = logging.getLogger(__name__)

ENERGY_KEY, FORCES_KEY, STRESS_KEY = "REF_energy", "REF_forces", "REF_stress"


@dataclass
class MaceTrainer:
    """Settings of ``mace_run_train`` for xtalloop's small, CPU-friendly models.

    Parameters
    ----------
    num_channels, max_L, r_max, num_interactions, correlation
        Architecture of a model trained from scratch (a fine-tuned model keeps
        its parent's).
    epochs, batch_size, lr
        Optimisation; fine-tuning uses ``lr / 10``.
    energy_weight, forces_weight, stress_weight
        Loss weights (``--loss weighted``; energies per atom).
    valid_fraction
        Share of the training frames mace holds out for its own early checks.
    bootstrap
        Ensemble members train on bootstrap resamples of the structures, not
        all of them (worse with a few dozen structures, see above).
    device
        Torch device.
    threads
        Torch threads of the training process.
    timeout_s
        A training process running longer than this is stopped.
    """

    num_channels: int = 32
    max_L: int = 0
    r_max: float = 5.0
    num_interactions: int = 2
    correlation: int = 2
    epochs: int = 60
    batch_size: int = 4
    lr: float = 0.01
    energy_weight: float = 10.0
    forces_weight: float = 1.0
    stress_weight: float = 1.0
    valid_fraction: float = 0.1
    bootstrap: bool = False
    device: str = "cpu"
    threads: int = 1
    timeout_s: float = 3600.0

    def train(self, frames: list[Atoms], workdir: str | Path, seed: int = 0,
              parent: Path | None = None, name: str = "model",
              e0s: dict[int, float] | None = None) -> Path:
        """Train one model on ``frames``; returns its native ``<name>.mace.json`` file.

        mace's own ``<name>.model`` pickle stays in ``workdir`` for mace's
        tools; xtalloop never reads it.

        Parameters
        ----------
        frames
            Atoms with a single-point calculator holding energy, forces and
            (for periodic cells) stress.
        workdir
            Folder of mace's inputs, logs and checkpoints.
        seed
            mace's random seed.
        parent
            A native MACE model (``.mace.json``) to fine-tune; ``None`` trains
            from scratch.
        name
            Name of the model file.
        e0s
            Reference energy (eV) per atomic number; ``None`` fits them to
            ``frames`` by least squares (mace's ``--E0s=average``).

        Raises
        ------
        XtalloopError
            With the last line of mace's log if training fails.
        """
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if len(frames) < 2:
            raise XtalloopError(f"cannot train a model on {len(frames)} frame(s)")
        # mace resumes from checkpoints it finds: a stale one (other data) would crash it
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
        train_file = workdir / "train.xyz"
        write(train_file, [_labelled(a) for a in frames], format="extxyz")
        native = workdir / f"{name}{SUFFIX}"
        for stale in (native, weights_path(native), workdir / f"{name}.model"):
            stale.unlink(missing_ok=True)  # a failed run must not leave an old model behind
        args = [
            sys.executable, "-m", "xtalloop.learn.mace_run", f"--native={native}",
            *_parent_arguments(parent), "--", f"--name={name}",
            f"--train_file={train_file}", f"--valid_fraction={self.valid_fraction}",
            f"--energy_key={ENERGY_KEY}", f"--forces_key={FORCES_KEY}",
            f"--stress_key={STRESS_KEY}", f"--E0s={_e0s_argument(e0s)}", "--loss=weighted",
            f"--energy_weight={self.energy_weight}", f"--forces_weight={self.forces_weight}",
            f"--stress_weight={self.stress_weight}", "--compute_stress=True",
            f"--batch_size={min(self.batch_size, max(1, len(frames) // 2))}",
            f"--max_num_epochs={self.epochs}", f"--device={self.device}",
            "--default_dtype=float64", f"--seed={seed}", f"--work_dir={workdir}",
        ]
        if parent is not None:  # mace_run writes the parent as --foundation_model
            args += ["--multiheads_finetuning=False", f"--lr={self.lr / 10}"]
        else:
            args += ["--model=MACE", f"--num_channels={self.num_channels}",
                     f"--max_L={self.max_L}", f"--r_max={self.r_max}",
                     f"--num_interactions={self.num_interactions}",
                     f"--correlation={self.correlation}", f"--lr={self.lr}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "OPENBLAS_NUM_THREADS": str(self.threads)}
        start = time.perf_counter()
        try:
            proc = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise XtalloopError(f"MACE training stopped after {self.timeout_s:.0f} s "
                                f"(see {workdir})") from None
        if proc.returncode != 0 or not native.is_file():
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
                     if ln.strip() and " INFO: " not in ln]
            raise XtalloopError(f"MACE training failed: {lines[-1] if lines else '?'} "
                                f"(see {workdir})")
        # trained on this machine: trusted here (the registry fetches it back only if so)
        add_files([p for p in (native, weights_path(native)) if p.is_file()],
                  source=f"trained here: {native}")
        logger.info("trained %s on %d frames in %.0f s", native, len(frames),
                    time.perf_counter() - start)
        return native

    def train_ensemble(self, frames: list[Atoms], workdir: str | Path, size: int = 3,
                       seed: int = 0, parents: list[Path] | None = None,
                       bootstrap: bool | None = None) -> Path:
        """Train ``size`` members into ``workdir/ensemble/member_<i>.mace.json`` (+ weights).

        Member ``i`` trains with seed ``seed + i`` on all the frames or, with
        ``bootstrap`` (``None``: the trainer's setting), on a bootstrap
        resample of the structures (whole relaxations are drawn, not single
        frames), from ``parents[i % len(parents)]`` when parents are given.

        Returns
        -------
        Path
            The ensemble folder (what :func:`~xtalloop.models.energy_model.load_energy_model`
            loads as one model).
        """
        workdir = Path(workdir)
        out = workdir / "ensemble"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        names = groups(frames)
        e0s = fit_e0s(frames)  # one set for all members, from all the frames
        bootstrap = self.bootstrap if bootstrap is None else bootstrap
        for i in range(size):
            subset = frames
            if bootstrap and size > 1 and len(names) > 1:
                weight = _bootstrap_weights(frames, names, rng)
                subset = [a for a in frames for _ in range(weight[a.info["group"]])]
            parent = parents[i % len(parents)] if parents else None
            model = self.train(subset, workdir / f"member_{i}", seed=seed + i,
                               parent=parent, name=f"member_{i}", e0s=e0s)
            weights_path(model).replace(out / weights_path(model).name)
            model.replace(out / model.name)
        return out

    def settings(self) -> dict:
        """The settings as a plain dict, for the model registry."""
        return asdict(self)


def _parent_arguments(parent: Path | None) -> list[str]:
    """How :mod:`xtalloop.learn.mace_run` gets the model to fine-tune: a native description.

    A pickled ``.model`` is refused (:func:`~xtalloop.models.mace_format.pickle_refused`).
    """
    if parent is None:
        return []
    parent = Path(parent)
    if not is_native(parent):
        if parent.suffix in PICKLE_SUFFIXES:
            raise pickle_refused(parent)
        raise XtalloopError(f"{parent}: not a MACE model file (expected *{SUFFIX})")
    read_description(parent)  # a damaged or missing parent fails here, in one line
    return [f"--parent-native={parent.resolve()}"]


def fit_e0s(frames: list[Atoms]) -> dict[int, float]:
    """Per-element reference energies: least squares of the frames' energies on their counts.

    What mace's ``--E0s=average`` computes (the minimum-norm solution where
    the compositions do not determine every element).
    """
    zs = sorted({int(z) for a in frames for z in a.numbers})
    column = {z: j for j, z in enumerate(zs)}
    counts = np.zeros((len(frames), len(zs)))
    for i, atoms in enumerate(frames):
        for z in atoms.numbers:
            counts[i, column[int(z)]] += 1
    energies = np.array([a.calc.results["energy"] for a in frames])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    return {z: float(e) for z, e in zip(zs, solution, strict=True)}


def _e0s_argument(e0s: dict[int, float] | None) -> str:
    """mace's ``--E0s`` value: ``average`` or a dict literal."""
    if e0s is None:
        return "average"
    return "{" + ", ".join(f"{z}: {e!r}" for z, e in sorted(e0s.items())) + "}"


def _bootstrap_weights(frames: list[Atoms], names: list[str],
                       rng: np.random.Generator) -> dict[str, int]:
    """How often each structure is drawn in one bootstrap resample.

    A structure is added back wherever the draw left an element out: every
    member must know every element, or the ensemble could not be evaluated
    together.
    """
    counts = np.bincount(rng.choice(len(names), size=len(names), replace=True),
                         minlength=len(names))
    weight = dict(zip(names, counts.tolist(), strict=True))
    symbols = {name: set() for name in names}
    for atoms in frames:
        symbols[atoms.info["group"]].update(atoms.get_chemical_symbols())
    covered = set().union(*(symbols[n] for n in names if weight[n]))
    for name in names:
        if symbols[name] - covered:
            weight[name] += 1
            covered |= symbols[name]
    return weight


def _labelled(atoms: Atoms) -> Atoms:
    """A copy with the calculator's results under mace's ``REF_`` keys."""
    out = atoms.copy()
    out.calc = None
    calc = atoms.calc
    out.info = {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}
    out.info[ENERGY_KEY] = calc.results["energy"]
    out.arrays[FORCES_KEY] = np.asarray(calc.results["forces"])
    stress = calc.results.get("stress")
    if stress is not None and atoms.pbc.all():
        out.info[STRESS_KEY] = np.asarray(stress)
    return out
