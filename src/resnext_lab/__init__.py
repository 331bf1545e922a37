"""resnext-lab: ablation experiments on the ResNeXt design space."""

__version__ = "0.1.0"
