"""Shared helpers for tests that run `run.py` end to end and read what a run leaves behind."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A model and data small enough that one CPU epoch takes about a second (27k params, 256 images).
TINY = [
    "model.width_scale=0.125",
    "model.cardinality=2",
    "model.width=4",
    "data.limit_train=256",
    "data.limit_eval=128",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


def tiny(*overrides: str) -> list[str]:
    """TINY with `overrides` replacing the entries of the same keys (Hydra would keep both in the job's name)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(overrides)


def cli_env(home: Path) -> dict[str, str]:
    """Offline, quiet W&B whose caches stay in `home`; no full Hydra tracebacks, whatever the caller's shell says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        # task=plan's step-time cache: the tests' timings stay out of the user's ~/.cache
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        PYTHONUNBUFFERED="1",
        # one thread: the tiny model gains nothing from two, and pytest already keeps one core busy
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture(scope="session")
def wandb_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wandb_home")


@pytest.fixture(scope="session")
def run_cli(wandb_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_cli(*overrides)`: `python run.py ...` in a subprocess, its exit status and output captured."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "run.py", *args],
            cwd=ROOT,
            env=cli_env(wandb_home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture()
def start_cli(wandb_home: Path, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """`start_cli(*overrides)`: `run.py` started in its own process group, killed at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"started-{len(started)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "run.py", *args],
            cwd=ROOT,
            env=cli_env(wandb_home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def job_dirs(sweep_dir: Path) -> dict[str, Path]:
    """The sweep's job folders, keyed by their overrides (`.hydra/overrides.yaml`, sorted, joined by spaces)."""
    from omegaconf import OmegaConf

    return {
        " ".join(sorted(OmegaConf.load(p))): p.parent.parent for p in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"))
    }


def find_job(sweep_dir: Path, override: str) -> Path:
    """The one job folder of the sweep whose overrides include `override`."""
    found = [d for key, d in job_dirs(sweep_dir).items() if override in key.split(" ")]
    assert len(found) == 1, f"{override}: {len(found)} jobs in {sweep_dir}: {list(job_dirs(sweep_dir))}"
    return found[0]


# --- W&B's offline run file ------------------------------------------------------------------------
# `run-<id>.wandb` is a LevelDB-style log of protobuf `Record`s: a 7-byte header (":W&B", magic
# 0xBEE1, version 0), then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`,
# a record being one FULL chunk or FIRST, MIDDLE..., LAST. wandb 0.31 writes and reads it in Go
# (wandb-core) and no longer ships the Python reader, so this is a small one.

_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path, finished: bool = True) -> list[Any]:
    """Every record of an offline run file, as `wandb.proto.wandb_internal_pb2.Record` messages.

    With `finished`, waits (up to a minute) for the writer to finish the run, that is for the file to
    end in its `exit` record: `run.finish()` can return while wandb-core is still writing the file.
    """
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            records = _read_records(path)
        except AssertionError:  # a chunk still being written
            records = []
        if not finished or (records and records[-1].WhichOneof("record_type") == "exit"):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after 60 s (the run did not finish)"
        time.sleep(0.05)


def _read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B" and struct.unpack("<HB", raw[4:7]) == (0xBEE1, 0), f"{path}: not a W&B run file"
    records, parts, pos = [], [], 7
    while pos + _CHUNK_HEADER <= len(raw):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _CHUNK_HEADER:  # the block's zero-filled tail
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + _CHUNK_HEADER])
        data = raw[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        if kind == 0 and length == 0:  # zero padding at the end of a file still being written
            break
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad checksum at {pos}"
        pos += _CHUNK_HEADER + length
        if kind in (_FULL, _FIRST):
            parts = [data]
        else:
            parts.append(data)
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
    return records


def wandb_values(path: Path, kind: str) -> list[dict[str, Any]]:
    """The `summary` or `history` records of a run file, each as {key: JSON-decoded value}."""
    import json

    out = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != kind:
            continue
        items = record.summary.update if kind == "summary" else record.history.item
        out.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return out


def wandb_summary(path: Path) -> dict[str, Any]:
    """The run's final summary: its summary records' updates, later ones winning."""
    summary: dict[str, Any] = {}
    for update in wandb_values(path, "summary"):
        summary.update(update)
    return summary
