"""The packed launcher's and the design-space sweeper's configs, structured configs in Hydra's ConfigStore (as
Hydra's own plugins register theirs), so that `hydra/launcher=packed` and `hydra/sweeper=design_space` resolve
in any Hydra app that has this package installed:

    python run.py -m hydra/launcher=packed experiment=table3 scale=proxy
    python run.py -m hydra/launcher=packed hydra.launcher.jobs_per_device=4 hydra.launcher.devices=[0,1] ...
    python run.py -m hydra/launcher=packed hydra.launcher.stack=4 seed=0,1,2,3 ...
    python run.py -m experiment=design_space scale=cpu hydra.sweeper.networks=20

Their values are checked by the plugins themselves (one error line naming the setting), so the fields are untyped
where a wrong type must reach that check. (No `from __future__ import annotations` here: Hydra's plugin scan
executes this module outside sys.modules, where dataclasses cannot resolve string annotations.)
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.resnext_lab.packed_launcher.PackedLauncher"
    #: worker processes per device; each runs one job after another, as Hydra's basic launcher does
    jobs_per_device: Any = 2
    #: auto: every GPU in CUDA_VISIBLE_DEVICES (all when unset), the CPU when there is none; cpu; or [0, 1, ...]
    devices: Any = "auto"
    #: seeds trained as one stacked network: jobs that differ only in `seed` run as stacks of up to this many
    #: (1: every job alone); auto: stacked where the plan measures stacking faster on this machine
    stack: Any = 1


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="resnext_lab")


@dataclass
class DesignSpaceSweeperConf:
    _target_: str = "hydra_plugins.resnext_lab.design_space_sweeper.DesignSpaceSweeper"
    #: networks sampled from each space, within the band (resnext_lab/design_space.py checks every value)
    networks: Any = 50
    #: seeds the sampling; each space draws from its own generator
    seed: Any = 0
    #: {quantity: params | flops, low, high}: the complexity band every network must fall in
    band: Any = field(default_factory=lambda: {"quantity": "flops", "low": 0, "high": 1e18})
    #: {name: {blocks: [min, max], width: [min, max], cardinality: [C, ...]}}
    spaces: Any = field(default_factory=dict)
    #: other settings swept for every network, as the basic sweeper's params
    params: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="design_space", node=DesignSpaceSweeperConf, provider="resnext_lab"
)


@dataclass
class SequentialSweeperConf:
    _target_: str = "hydra_plugins.resnext_lab.sequential_sweeper.SequentialSweeper"
    #: other settings swept, as the basic sweeper's params (a `seed` among them is replaced by the design's seeds)
    params: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="sequential", node=SequentialSweeperConf, provider="resnext_lab"
)


def _with_stack(base: type, name: str) -> type:
    """Submitit's launcher conf with `stack` (hydra_plugins/resnext_lab/stacks.py), which its own schema refuses."""

    @dataclass
    class Conf(base):  # type: ignore[valid-type, misc]
        #: seeds trained as one stacked network, one submitit job per stack (1: every job alone; auto: measured)
        stack: Any = 1

    Conf.__name__ = Conf.__qualname__ = name
    return Conf


try:  # the submitit plugin is a dependency; a checkout without it still has the packed launcher
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
except ImportError:  # pragma: no cover
    pass
else:
    for _name, _base in (("local", LocalQueueConf), ("slurm", SlurmQueueConf)):
        ConfigStore.instance().store(
            group="hydra/launcher",
            name=f"submitit_{_name}_stacked",
            node=_with_stack(_base, f"{_base.__name__}Stacked"),
            provider="resnext_lab",
        )
