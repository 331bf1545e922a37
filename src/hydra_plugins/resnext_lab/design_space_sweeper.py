"""`hydra/sweeper=design_space`: a sweep whose jobs are networks sampled from design spaces.

    python run.py -m experiment=design_space scale=cpu               # the spaces, band and size in the file
    python run.py -m experiment=design_space scale=cpu seed=0,1      # every network crossed with two seeds

The sweeper samples each space's networks within the complexity band (`resnext_lab.design_space`), crosses
them with whatever the sweeper's `params` and the command line sweep, as Hydra's basic sweeper would, and
hands the whole list to the launcher (basic, packed, submitit) in one batch. Every network is an ordinary
job: its folder, results.json and W&B run, resumed or skipped on a rerun, priced by `task=plan`.
"""

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from resnext_lab import design_space
from resnext_lab.errors import ConfigError, fail
from resnext_lab.overrides import expand

log = logging.getLogger("resnext_lab.design_space")


class DesignSpaceSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = settings  # checked in sweep(), against the composed config, in one line
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        try:
            jobs = design_space.jobs(self.config, expand)
        except ConfigError as err:
            fail(str(err))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        spaces = sorted({j[0].split("=", 1)[1] for j in jobs})
        log.info(f"design-space sweep: {len(jobs)} jobs from the spaces {', '.join(spaces)}")
        returns = self.launcher.launch(jobs, initial_job_idx=0)
        for r in returns:
            _ = r.return_value  # a job's exception surfaces here, as with the basic sweeper
        return [returns]
