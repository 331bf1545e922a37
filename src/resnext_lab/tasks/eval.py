"""task=eval: a checkpoint of this project's runs scored again, on a split or a data set of the same shape.

    python run.py task=eval ckpt_path=RUN/checkpoints/last.ckpt [data.split=test|val|train] [data=...]
    python run.py -m task=eval ckpt_path=SWEEP_DIR        # every run of a sweep (sweep.OutputFolder expands it)

The network, its training and the data come from the run that wrote the checkpoint: its folder's
`.hydra/config.yaml`, checked against the network its results.json records. The command line may change only
what a scoring may change (`ALLOWED`: the data, its split and batch, the precision and the device); anything
else is one line and exit 2, as are a missing checkpoint, one of another network and a data set whose classes
or image shape the network does not take. The scores go to eval.json beside the run (`evaluation.py`), as
`eval/<split>/...` (`eval/<data>/<split>/...` on another data set), where the reports can read them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from resnext_lab import evaluation, results
from resnext_lab.callbacks import TimedProgressBar, quiet
from resnext_lab.config import to_python
from resnext_lab.data import TensorBatches, build_datamodule
from resnext_lab.errors import ConfigError, first_line
from resnext_lab.hardware import resolve_precision
from resnext_lab.job import check_job
from resnext_lab.models import build, complexity
from resnext_lab.module import ClassificationModule
from resnext_lab.overrides import register_resolvers

log = logging.getLogger("resnext_lab")

SPLITS = ("test", "val", "train")
#: what the command line may set besides data and data.*: everything else is the run's
ALLOWED = (
    "task",
    "ckpt_path",
    "out_root",
    "trainer.precision",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "trainer.limit_test_batches",
)


def eval_task(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint `cfg.ckpt_path` on `data.split`; the eval.json entry it wrote."""
    start = time.perf_counter()
    ckpt, run_dir = find_checkpoint(cfg.get("ckpt_path"))
    result = results.load(run_dir) or {}
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = _override_keys(overrides, run_dir)
    run_cfg = _run_config(run_dir)
    for key in keys:
        if key.startswith("trainer."):
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), force_add=True)
    job = check_job(run_cfg, check_data=False)  # the run's network, built from the data it trained on
    spec = job.spec
    _check_recorded(spec, result, run_dir)
    data, split, same_data = _data(cfg, run_cfg, keys)
    as_trained = data.pop("as_trained")
    dm = build_datamodule(data)
    _check_fits(dm, spec, data["name"])
    if hasattr(dm, "check_available"):
        dm.check_available()
    dm.shuffle_seed = job.settings.run.seed
    if split == "train" and not hasattr(dm, "train_images"):
        raise ConfigError(f"data.split=train: {data['name']} reads its training images through the training transform")

    t = job.settings.trainer
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    recorded = (result.get("precision") or {}).get("used")
    if "trainer.precision" in keys or not recorded:
        precision, why = resolve_precision(t.precision, cuda)
    else:
        precision, why = recorded, "the run's"
    module = ClassificationModule(
        build(spec), job.settings.optim, spec.num_classes, t.channels_last is not False, t.check_finite_every_n_steps
    )
    checkpoint = _load_checkpoint(ckpt)
    _load_weights(module.net, checkpoint, ckpt, spec.name)
    quiet()
    limits = {"test": t.limit_test_batches, "val": t.limit_val_batches, "train": t.limit_train_batches}
    limit = t.limit_test_batches if "trainer.limit_test_batches" in keys else limits[split]  # as the run read it
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=1,
        precision=precision,
        deterministic=job.settings.run.deterministic,
        limit_test_batches=limit,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=t.enable_progress_bar,
        callbacks=[TimedProgressBar(t.progress_bar_interval_s)] if t.enable_progress_bar else [],
        default_root_dir=str(run_dir),
    )
    log.info("%s: %s on %s's %s split, precision %s (%s)", run_dir, ckpt.name, data["name"], split, precision, why)
    trainer.test(module, datamodule=dm if split == "test" else _Split(dm, split), verbose=False)
    prefix = f"eval/{split}" if same_data else f"eval/{data['name']}/{split}"
    metrics = {
        f"{prefix}/{k.split('/', 1)[1]}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
    }
    entry = {
        "metrics": metrics,
        "checkpoint": {"path": str(ckpt), "epochs": _epochs(checkpoint)},
        "data": {**_plain(dataclasses.asdict(dm.settings)), "split": split, "as_trained": as_trained},
        "precision": {"used": precision, "why": why},
        "git_commit": results.git_commit(),
        "run_git_commit": result.get("git_commit"),
        "versions": results.versions(),
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    written = evaluation.record(run_dir, prefix, entry)
    _print(metrics, result, split if as_trained else None, written)
    return entry


def find_checkpoint(value: Any) -> tuple[Path, Path]:
    """(the checkpoint, its run's folder) of `ckpt_path`: a .ckpt file, or a run's folder (its last checkpoint)."""
    if value is None or value == "":
        raise ConfigError("ckpt_path: missing; must be a run's checkpoint (RUN/checkpoints/last.ckpt) or its folder")
    path = Path(str(value)).expanduser()
    if path.is_dir():
        if not (path / evaluation.RESULTS).is_file():
            hint = "; a sweep's folder: score each of its runs with -m" if evaluation.run_folders(path) else ""
            raise ConfigError(f"ckpt_path={value}: no results.json in this folder: not a run's folder{hint}")
        path = path / evaluation.CHECKPOINT
        if not path.is_file():
            raise ConfigError(f"ckpt_path={value}: the run has no {evaluation.CHECKPOINT} (it saved no epoch)")
    elif not path.is_file():
        raise ConfigError(f"ckpt_path={value}: no such file")
    for run_dir in list(path.resolve().parents)[:3]:  # RUN/checkpoints/x.ckpt, RUN/checkpoints/set-aside/x.ckpt
        if (run_dir / evaluation.RESULTS).is_file():
            return path.resolve(), run_dir
    raise ConfigError(
        f"ckpt_path={value}: no results.json of its run above it; task=eval scores the checkpoints this "
        "project's runs write (RUN/checkpoints/last.ckpt)"
    )


def _override_keys(overrides: list[str], run_dir: Path) -> list[str]:
    """The keys the command line sets; one line for any that a scoring may not change."""
    keys = []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key = parsed.key_or_group.lstrip("+~")
        if key not in ALLOWED and key != "data" and not key.startswith("data."):
            raise ConfigError(
                f"{text}: task=eval scores the network as its run trained it ({run_dir}); it may set only "
                f"ckpt_path, data, data.* (data.split={'|'.join(SPLITS)}) and {', '.join(ALLOWED[3:])}"
            )
        keys.append(key)
    return keys


def _run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: has no .hydra/config.yaml, the settings its run trained with")
    register_resolvers()
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def _check_recorded(spec: Any, result: dict[str, Any], run_dir: Path) -> None:
    """The run's settings must still build the network its results.json records (the code may have changed)."""
    recorded = result.get("model") or {}
    built = complexity(spec)["params"]
    if recorded.get("params") not in (None, built):
        raise ConfigError(
            f"{run_dir}: its settings now build {spec.name} with {built:,} params, but the run recorded "
            f"{recorded.get('name')} with {recorded['params']:,}: evaluate it at its commit {result.get('git_commit')}"
        )


def _data(cfg: DictConfig, run_cfg: DictConfig, keys: list[str]) -> tuple[dict[str, Any], str, bool]:
    """(the data node, the split, whether it is the run's own data set): the run's data with the command line's
    data.* on top, or a data set the command line names (`data=...`); the node says `as_trained` when it is
    the run's own data but for how it is read (batch sizes, where the files are)."""
    if "data" in keys:
        data = dict(to_python(cfg.data))
    else:
        data = dict(to_python(run_cfg.data))
        for key in keys:
            if key.startswith("data."):
                data[key.split(".", 1)[1]] = to_python(OmegaConf.select(cfg, key))
    split = data.pop("split", None) or cfg.data.get("split", "test")
    if split not in SPLITS:
        raise ConfigError(f"data.split={split!r}: must be one of {', '.join(SPLITS)}")
    reading = ("batch_size", "eval_batch_size", "root", "download", "num_workers", "pin_memory", "persistent_workers")
    trained = {k: v for k, v in to_python(run_cfg.data).items() if k not in reading}
    same = data.get("name") == trained.get("name")
    data["as_trained"] = same and {k: v for k, v in data.items() if k not in reading} == trained
    return data, str(split), same


def _check_fits(dm: Any, spec: Any, name: str) -> None:
    have = (dm.num_classes, dm.in_channels, dm.image_size)
    need = (spec.num_classes, spec.in_channels, spec.image_size)
    if have != need:
        raise ConfigError(
            f"data={name}: its images are {have[2]}x{have[2]}x{have[1]} in {have[0]} classes; the checkpoint's "
            f"network ({spec.name}) takes {need[2]}x{need[2]}x{need[1]} in {need[0]} classes"
        )


def _load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The checkpoint, read once; one line when it does not load or holds no weights."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own file (tasks/train)
    except Exception as err:  # torn, not a checkpoint at all: whatever torch says
        raise ConfigError(f"ckpt_path={ckpt}: not a checkpoint that loads ({first_line(err)})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"ckpt_path={ckpt}: not a Lightning checkpoint (it holds no state_dict)")
    return checkpoint


def _load_weights(net: torch.nn.Module, checkpoint: dict[str, Any], ckpt: Path, name: str) -> None:
    """The checkpoint's network weights into `net`; one line when they are not this network's."""
    state = checkpoint["state_dict"]
    weights = {k.removeprefix("net.").replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith("net.")}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        what = (
            f"{len(missing)} of its weights missing (first {missing[0]})"
            if missing
            else f"{len(extra)} weights it does not have (first {extra[0]})"
            if extra
            else f"{shapes[0]} shaped {tuple(weights[shapes[0]].shape)}, not {tuple(expected[shapes[0]].shape)}"
        )
        raise ConfigError(f"ckpt_path={ckpt}: not a checkpoint of {name}, the network its run recorded: {what}")
    net.load_state_dict(weights)


def _epochs(checkpoint: dict[str, Any]) -> int | None:
    """The epochs the checkpoint had trained (its `epoch` counts from 0)."""
    epoch = checkpoint.get("epoch")
    return None if epoch is None else int(epoch) + 1


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def _print(metrics: dict[str, float], result: dict[str, Any], split: str | None, written: Path) -> None:
    """The scores, each beside what the run recorded when it is the same split of the same data."""
    recorded = result.get("metrics") or {}
    lines = []
    for key, value in metrics.items():
        before = recorded.get(f"{split}/{key.rsplit('/', 1)[1]}") if split in ("test", "val") else None
        lines.append(f"{key} {value:.4f}" + (f" (the run recorded {before:.4f})" if before is not None else ""))
    print("\n".join([*lines, f"  wrote {written}"]), flush=True)


class _Split(pl.LightningDataModule):
    """One split of a datamodule served as its test set, as a scoring reads it: in order, not augmented."""

    def __init__(self, inner: Any, split: str) -> None:
        super().__init__()
        self.inner, self.split = inner, split

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.inner.trainer = self.trainer  # the datamodule reads its device and ranks from its trainer
        self.inner.setup(stage)

    def test_dataloader(self) -> Any:
        inner = self.inner
        if self.split == "val":
            return inner.val_dataloader()
        return TensorBatches(inner.train_images, inner.train_labels, inner.settings.eval_batch_size)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.inner.on_after_batch_transfer(batch, dataloader_idx)
