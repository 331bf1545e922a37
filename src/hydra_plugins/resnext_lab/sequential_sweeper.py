"""`hydra/sweeper=sequential`: seeds in rounds, until every contrast of the experiment's table is decided.

    python run.py -m experiment=demo scale=cpu hydra/sweeper=sequential
    # or in the experiment file:  defaults: [{override /hydra/sweeper: sequential}]

The design is the experiment's `report.sequential` (`resnext_lab.report.sequential`, docs/SEQUENTIAL.md).
The cells are what the sweeper's `params` and the command line sweep, as with Hydra's basic sweeper, less
the seed: round 1 runs every cell at the design's first `start` seeds, through whatever launcher is
configured (basic, packed, local, slurm). Then the look: every open contrast is tested, its decision recorded
in `<sweep>/sequential.json` (written atomically) with the look that made it. The next round runs only the
cells that still have an open contrast, at the next seeds, until every contrast is decided or `max` is
reached. A sweep run again reads the file: the looks it records are not taken again, their decisions stand,
and it goes on at the first look not recorded (the jobs of a round already run are skipped as in any rerun).
"""

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from resnext_lab.errors import ConfigError, fail
from resnext_lab.overrides import expand
from resnext_lab.report import sequential
from resnext_lab.report.collect import load_results

log = logging.getLogger("resnext_lab.sequential")


class SequentialSweeper(Sweeper):
    def __init__(self, params: Any = None) -> None:
        super().__init__()
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _cells(self, arguments: list[str]) -> list[list[str]]:
        """The swept cells' overrides, without a seed, in the basic sweeper's order."""
        params = OmegaConf.to_container(self.params, resolve=True) if self.params is not None else {}
        jobs = expand([f"{k}={v}" for k, v in (params or {}).items()] + list(arguments))
        if jobs is None:
            raise ConfigError("hydra/sweeper=sequential: sweeps only lists of values (a,b,c), not ranges or intervals")
        cells: dict[frozenset[str], list[str]] = {}
        for job in jobs:
            key = sequential.job_key(job)
            cells.setdefault(key, [o for o in job if frozenset([o]) <= key])
        return list(cells.values())

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            design = sequential.design_of(self.config.get("report"))
            if design is None:
                raise ConfigError("hydra/sweeper=sequential: the experiment declares no report.sequential design")
            cells = self._cells(arguments)
            state = sequential.load_state(sweep_dir, design)
        except ConfigError as err:
            fail(str(err))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        keys = [sequential.job_key(c) for c in cells]
        returns, index = [], 0
        if state["looks"]:
            log.info(f"sequential sweep: {len(state['looks'])} look(s) recorded in {sweep_dir / sequential.FILE}")
        while not sequential.finished(state, design):
            k = len(state["looks"])
            running = sequential.open_keys(keys, load_results(sweep_dir), design, state) if k else keys
            seeds = design.round_seeds(k)
            jobs = [
                [*cell, f"seed={s}"] for cell, key in zip(cells, keys, strict=True) if key in running for s in seeds
            ]
            log.info(
                f"sequential sweep, round {k + 1} of at most {len(design.looks)}: {len(running)} of {len(cells)} "
                f"cells, seeds {seeds[0]}-{seeds[-1]} ({len(jobs)} jobs)"
            )
            batch = self.launcher.launch(jobs, initial_job_idx=index)
            for r in batch:
                _ = r.return_value  # a job's exception surfaces here, as with the basic sweeper
            returns.append(batch)
            index += len(jobs)
            state = sequential.take_look(state, load_results(sweep_dir), design)
            sequential.write_state(sweep_dir, state)
            for name, d in state["decisions"].items():
                if d.get("look") == k + 1:
                    log.info(
                        f"look {k + 1} ({design.looks[k]} seeds): {name}: {d['decision']} ({d.get('verdict', '')})"
                    )
        print(sequential.decisions_text(state), flush=True)
        return returns
