"""The top-level experiments/ folder as Hydra's config group `experiment`, wherever run.py runs from.

A paper table's experiment is experiments/NAME.yaml (the option `experiment=NAME`) and its settings at
each scale are experiments/NAME/SCALE.yaml (the option `NAME/SCALE`, which conf/config.yaml picks as
`experiment@_global_: ${experiment}/${scale}`). Hydra's file:// source would need them one folder deeper,
in experiments/experiment/, and a relative file:// path would resolve against the working directory; so
this config source serves the folder itself, found from this file, under the scheme below. conf/config.yaml
puts it on the search path:

    hydra:
      searchpath:
        - resnext-experiments://            # the checkout's experiments/
        # - resnext-experiments:///abs/dir  # or another folder laid out the same way

Hydra registers a ConfigSource by its scheme when it scans `hydra_plugins` (as its own file:// and pkg://),
so the scheme resolves in every process that composes: run.py, `resnext_lab.job.compose`, and the
packed launcher's workers. It serves only the `experiment` group; every other path is not found here.
"""

import os
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

#: the config group this source serves
GROUP = "experiment"
#: the checkout's experiments/ (src/hydra_plugins/resnext_lab/ is three folders below the checkout)
CHECKOUT_EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"


class ExperimentsConfigSource(ConfigSource):
    """`resnext-experiments://[DIR]`: DIR (default: the checkout's experiments/) as the group `experiment`."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.path = str(Path(self.path).resolve() if self.path else CHECKOUT_EXPERIMENTS)

    @staticmethod
    def scheme() -> str:
        return "resnext-experiments"

    def _file(self, config_path: str) -> Path | None:
        """Where a path of the group is on disk (the folder itself for the group); None outside the group."""
        group, _, rest = config_path.strip("/").partition("/")
        return Path(self.path, rest) if group == GROUP else None

    def load_config(self, config_path: str) -> ConfigResult:
        file = self._file(self._normalize_file_name(config_path))
        if file is None or not file.is_file():
            raise ConfigLoadError(f"Config not found : {file or config_path}")
        with open(file, encoding="utf-8") as f:
            header = ConfigSource._get_header_dict(f.read(512))
        return ConfigResult(
            config=OmegaConf.load(file),
            path=self.full_path(),
            provider=self.provider,
            header=header,
        )

    def available(self) -> bool:
        return Path(self.path).is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return True  # the root, which holds the group
        file = self._file(config_path)
        return file is not None and file.is_dir()

    def is_config(self, config_path: str) -> bool:
        file = self._file(self._normalize_file_name(config_path))
        return file is not None and file.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        files: list[str] = []
        if config_path.strip("/") == "":
            names = [GROUP] if self.available() else []
        else:
            folder = self._file(config_path)
            names = os.listdir(folder) if folder is not None and folder.is_dir() else []
        for name in names:
            self._list_add_result(
                files=files,
                file_path=f"{config_path.strip('/')}/{name}".lstrip("/"),
                file_name=name,
                results_filter=results_filter,
            )
        return sorted(set(files))
