"""The packed launcher under Hydra's own launcher test suites, as Hydra's launcher plugins run them: found by
Hydra's plugin discovery, its config (`hydra/launcher=packed`) taken from the ConfigStore, and Hydra's sweeps
(one job, two jobs, overrides, custom resolvers, task names, working dirs) run through it on the CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase

from hydra_plugins.resnext_lab.packed_launcher import PackedLauncher

pytestmark = pytest.mark.e2e  # Hydra's suites run many sweeps

CPU = ["hydra.launcher.devices=cpu"]


@pytest.fixture(autouse=True)
def unset_version_base() -> Iterator[None]:
    """Hydra's suites expect a fresh process, whose version base is unset (so that jobs change into their
    folders); a test before them in this worker may have composed with version_base 1.3."""
    saved = Singleton._instances.pop(VersionBase, None)
    yield
    if saved is not None:
        Singleton._instances[VersionBase] = saved


def test_discovery() -> None:
    assert PackedLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("packed", CPU)])
class TestPackedLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=packed", *CPU, "hydra/hydra_logging=disabled", "hydra/job_logging=disabled"])],
)
class TestPackedLauncherIntegration(IntegrationTestSuite):
    pass
