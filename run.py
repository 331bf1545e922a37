"""resnext-lab's entry point: Hydra composes `conf/`, `task` picks what a run does.

python run.py                                   # train the default model (task=train)
python run.py task=complexity model=resnet50    # params and FLOPs only
python run.py -m model.cardinality=1,2,4,32,64  # a sweep at matched complexity
python run.py -m experiment=table3 scale=smoke  # a paper table's sweep (experiments/table3.yaml)
"""

from resnext_lab import interrupts

interrupts.install()  # Ctrl-C and SIGTERM end a run in one line, its job resumable, from the first import on

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from resnext_lab.cli import run_task  # noqa: E402
from resnext_lab.job import register  # noqa: E402

register()  # the config schemas (each group's YAML extends its own) and the sweep resolvers


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return run_task(cfg)


if __name__ == "__main__":
    main()
