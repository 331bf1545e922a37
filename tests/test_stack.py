"""Seeds stacked: each slice of a stack is exactly its seed's lone network, and no slice feels another.

Every check is a function that measures its property, run once on the real stack and once on a stack
broken on purpose (the mean loss over seeds, a BN sharing its statistics over seeds, one norm clipping
every seed), so that a check that could not fail would show.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnext_lab.config import OptimSettings
from resnext_lab.data.modules import build_datamodule
from resnext_lab.errors import ConfigError
from resnext_lab.models import ModelSpec, build, stack
from resnext_lab.models.stack import StackedResNeXt, stack_networks
from resnext_lab.module import ClassificationModule, Diverged, schedule, sgd
from resnext_lab.stacked import StackedDataModule, StackedModule, lone_checkpoint, slice_metrics, stack_checkpoints

#: table3's cpu scale (experiments/table3/cpu.yaml: cifar template, 1/4 width, 14x14 Fashion-MNIST), one block
#: per stage instead of three so that the tests stay fast
CPU = ModelSpec(
    template="cifar",
    stage_blocks=(1, 1, 1),
    cardinality=1,
    width=16,
    width_scale=0.25,
    num_classes=10,
    in_channels=1,
    image_size=14,
)
SPECS = {
    "1x16d": CPU,
    "32x1d": dataclasses.replace(CPU, cardinality=32, width=1),
    "no shortcuts": dataclasses.replace(CPU, cardinality=4, width=4, residual=False),
    "zero-gamma": dataclasses.replace(CPU, cardinality=4, width=4, zero_init_last_bn=True),
    "per-path init": dataclasses.replace(CPU, cardinality=4, width=4, init="per_path"),
}
SEEDS = (3, 1, 4)
OPTIM = OptimSettings(
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    no_decay_bn_bias=True,
    schedule="step",
    milestones=(1.0,),
    warmup_epochs=0.5,
)


def lone(spec: ModelSpec, seed: int) -> nn.Module:
    """Seed `seed`'s network as tasks/train.py draws it."""
    pl.seed_everything(seed, workers=True, verbose=False)
    return build(spec)


def seed_losses(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)


def summed(logits: Tensor, y: Tensor) -> Tensor:
    return seed_losses(logits, y).sum()


def averaged(logits: Tensor, y: Tensor) -> Tensor:
    """Broken on purpose: the mean over seeds divides each seed's gradient by S."""
    return seed_losses(logits, y).mean()


class SharedStatsBN(nn.BatchNorm2d):
    """Broken on purpose: a BN that normalises each channel with statistics over every seed's copy of it."""

    size = 1

    def forward(self, x: Tensor) -> Tensor:
        b, sc, h, w = x.shape
        xs = x.view(b, self.size, sc // self.size, h, w)
        mean = xs.mean((0, 1, 3, 4), keepdim=True)
        var = xs.var((0, 1, 3, 4), unbiased=False, keepdim=True)
        out = ((xs - mean) / torch.sqrt(var + self.eps)).view(b, sc, h, w)
        return out * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def shared_bn(net: StackedResNeXt) -> StackedResNeXt:
    """`net` with every BN replaced by `SharedStatsBN` (same parameters, same names)."""
    broken = copy.deepcopy(net)
    for module in broken.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.__class__ = SharedStatsBN
            module.size = net.size
    return broken


def batch(spec: ModelSpec, size: int, n: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, size, spec.in_channels, spec.image_size, spec.image_size, generator=g)
    return x, torch.randint(0, spec.num_classes, (n, size), generator=g)


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (absolute where b is all zeros, as a zero-gamma BN's gradient can be)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def step0_error(
    spec: ModelSpec,
    seeds: Sequence[int],
    loss: Callable[[Tensor, Tensor], Tensor] = summed,
    broken: Callable | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """The largest relative error of a slice's logits or gradients against its seed's lone network.

    In float64 each tensor is compared on its own scale. In float32 a gradient that is a small
    difference of large terms (a BN gamma's before a 32-group conv: about 1e-5) carries float32's
    rounding at the scale of its terms, 1e-3 of itself in the lone network alone against float64; so
    there each seed's gradients are compared on the scale of that seed's largest gradient.
    """
    net = stack(spec, seeds).to(dtype)
    if broken is not None:
        net = broken(net)
    x, y = batch(spec, len(seeds))
    x = x.to(dtype)
    logits = net(x)
    loss(logits, y).backward()
    stacked = dict(net.named_parameters())
    worst = 0.0
    for i, seed in enumerate(seeds):
        ref = lone(spec, seed).to(dtype)
        out = ref(x[:, i])
        F.cross_entropy(out, y[:, i]).backward()
        worst = max(worst, rel_err(logits[:, i].detach(), out.detach()))
        pairs = [
            (stacked[name].grad.unflatten(0, (len(seeds), -1))[i].reshape(p.shape), p.grad)
            for name, p in ref.named_parameters()
        ]
        if dtype == torch.float64:
            worst = max(worst, *(rel_err(mine, theirs) for mine, theirs in pairs))
        else:
            scale = max(theirs.abs().max().item() for _, theirs in pairs)
            worst = max(worst, *((mine - theirs).abs().max().item() / scale for mine, theirs in pairs))
    return worst


@pytest.mark.parametrize("name", list(SPECS))
def test_step0_logits_and_gradients_are_each_seeds_lone_ones(name: str) -> None:
    assert step0_error(SPECS[name], SEEDS) <= 1e-5
    assert step0_error(SPECS[name], SEEDS, dtype=torch.float32) <= 1e-5


def test_step0_check_catches_a_mean_loss_and_a_shared_bn() -> None:
    spec = SPECS["32x1d"]
    for dtype in (torch.float64, torch.float32):
        assert step0_error(spec, SEEDS, loss=averaged, dtype=dtype) > 0.1
        assert step0_error(spec, SEEDS, broken=shared_bn, dtype=dtype) > 1e-3


def test_slices_are_drawn_as_lone_networks_and_convert_both_ways() -> None:
    spec = SPECS["zero-gamma"]
    net = stack(spec, SEEDS)
    assert net.seeds == list(SEEDS) and net.spec == spec
    for i, seed in enumerate(SEEDS):
        ref = lone(spec, seed).state_dict()
        mine = net.lone_state_dict(i)
        assert list(mine) == list(ref)
        assert all(torch.equal(mine[k], ref[k]) for k in ref)
        # the RNG state a lone job's augmentation goes on from
        assert torch.equal(net.rngs[i], torch.get_rng_state())
    again = stack_networks([lone(spec, s) for s in SEEDS], SEEDS)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True))
    other = lone(spec, 99).state_dict()
    net.load_lone_state_dict(1, other)
    assert all(torch.equal(net.lone_state_dict(1)[k], other[k]) for k in other)
    assert all(torch.equal(net.lone_state_dict(0)[k], lone(spec, SEEDS[0]).state_dict()[k]) for k in other)


def test_other_block_forms_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="model.block='concat': only the grouped form stacks"):
        stack(dataclasses.replace(CPU, block="concat"), [0, 1])


def train(
    net: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    loss: Callable[[Tensor, Tensor], Tensor],
    clip: float | None = None,
) -> None:
    """k steps of the run's optimiser and schedule (steps_per_epoch 2: warm-up, then a milestone)."""
    opt = sgd(net, OPTIM)
    sched = schedule(opt, OPTIM, steps_per_epoch=2, max_epochs=2)
    for x, y in batches:
        opt.zero_grad()
        loss(net(x), y).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        sched.step()


def k_step_error(spec: ModelSpec, k: int = 4, loss: Callable = summed, clip: float | None = None) -> float:
    """The largest relative error of a slice's weights after k steps against k lone steps (in float64, so
    that what is compared is the arithmetic, not how float32 rounding grows in training)."""
    net = stack(spec, SEEDS).double()
    batches = [
        tuple(t.double() if t.is_floating_point() else t for t in batch(spec, len(SEEDS), seed=j)) for j in range(k)
    ]
    train(net, batches, loss, clip)
    worst = 0.0
    for i, seed in enumerate(SEEDS):
        ref = lone(spec, seed).double()
        train(ref, [(x[:, i], y[:, i]) for x, y in batches], lambda out, t: F.cross_entropy(out, t), clip)
        mine = net.lone_state_dict(i)
        worst = max(worst, max(rel_err(mine[k], v) for k, v in ref.state_dict().items() if v.is_floating_point()))
    return worst


def test_k_sgd_steps_stacked_are_k_lone_steps_per_seed() -> None:
    assert k_step_error(SPECS["per-path init"]) <= 1e-5
    assert k_step_error(SPECS["zero-gamma"]) <= 1e-5


def test_k_step_check_catches_a_mean_loss_and_a_global_clip() -> None:
    spec = SPECS["per-path init"]
    assert k_step_error(spec, loss=averaged) > 1e-3
    assert k_step_error(spec, clip=0.5) > 1e-3


def coupling(spec: ModelSpec, a: int, b: int, broken: Callable | None = None, k: int = 3) -> bool:
    """Whether changing seed a's batches changes seed b's weights after k steps (float32, bit for bit)."""
    weights = []
    for change in (False, True):
        net = stack(spec, SEEDS)
        if broken is not None:
            net = broken(net)
        batches = [batch(spec, len(SEEDS), seed=j) for j in range(k)]
        if change:
            for x, y in batches:
                x[:, a] = torch.randn_like(x[:, a]) * 3
                y[:, a] = (y[:, a] + 1) % spec.num_classes
        train(net, batches, summed)
        weights.append(net.lone_state_dict(b))
    return any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_changing_one_seeds_batches_leaves_another_seeds_weights_bit_identical() -> None:
    assert not coupling(SPECS["32x1d"], a=0, b=2)
    assert not coupling(SPECS["1x16d"], a=2, b=1)


def test_coupling_check_catches_a_shared_bn() -> None:
    assert coupling(SPECS["32x1d"], a=0, b=2, broken=shared_bn)


# --- the Lightning module, the data, the checkpoints ----------------------------------------------

TINY = dataclasses.replace(CPU, cardinality=2, width=4, width_scale=0.125, image_size=28)
DATA = {"name": "fashion_mnist", "limit_train": 128, "limit_eval": 64, "batch_size": 32, "augment": True}


@pytest.fixture(autouse=True)
def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def trainer(epochs: int, **kwargs) -> pl.Trainer:
    kwargs.setdefault("precision", "64-true")
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


class Lone64(ClassificationModule):
    """The lone module in float64 (the data are float32 after normalisation)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(next(self.net.parameters()).dtype))


class Stacked64(StackedModule):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(next(self.net.parameters()).dtype))


def datamodule(seed: int, **data) -> pl.LightningDataModule:
    dm = build_datamodule({**DATA, **data})
    dm.shuffle_seed = seed  # as tasks/train.py sets it
    return dm


def lone_fit(seed: int, epochs: int, ckpt: str | None = None, **data) -> tuple[ClassificationModule, pl.Trainer]:
    module = Lone64(lone(TINY, seed), OPTIM, 10, True, 1)
    t = trainer(epochs)
    t.fit(module, datamodule=datamodule(seed, **data), ckpt_path=ckpt, weights_only=False)
    return module, t


def stacked_fit(seeds: Sequence[int], epochs: int, ckpt: str | None = None, module_cls=Stacked64, **kwargs):
    data = kwargs.pop("data", {})
    net = kwargs.pop("net", None) or stack(TINY, seeds)
    module = module_cls(net, OPTIM, 10, True, 1)
    t = trainer(epochs, **kwargs)
    t.fit(
        module,
        datamodule=StackedDataModule([datamodule(s, **data) for s in seeds], net.rngs),
        ckpt_path=ckpt,
        weights_only=False,
    )
    return module, t


def same_weights(stacked: StackedModule, i: int, ref: ClassificationModule, tol: float = 1e-10) -> bool:
    mine, theirs = stacked.net.lone_state_dict(i), ref.net.state_dict()
    return all(rel_err(mine[k].double(), v.double()) <= tol for k, v in theirs.items())


def test_a_stacked_fit_is_each_seeds_lone_fit_with_its_own_data_order_and_augmentation() -> None:
    seeds = (0, 1)
    stacked, t = stacked_fit(seeds, 2)
    modules = []
    for i, seed in enumerate(seeds):
        module, lt = lone_fit(seed, 2)
        modules.append(module)
        assert same_weights(stacked, i, module)
        mine = slice_metrics(t.callback_metrics, i)
        assert mine.keys() == lt.callback_metrics.keys()
        for name, value in lt.callback_metrics.items():
            assert math.isclose(mine[name], float(value), rel_tol=1e-9, abs_tol=1e-9), name
    # the property is not vacuous: seed 1 trained apart from seed 0 ends elsewhere
    assert not same_weights(stacked, 1, modules[0], tol=1e-3)


def test_global_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"trainer.gradient_clip_val=1.0: clipping takes one norm"):
        stacked_fit((0, 1), 1, gradient_clip_val=1.0)
    # 16-mixed becomes bf16-mixed on a CPU; 16-true is refused for the same reason
    with pytest.raises(ConfigError, match=r"trainer.precision=16-true: fp16 trains with loss scaling"):
        stacked_fit((0, 1), 1, precision="16-true", module_cls=StackedModule)


def test_a_seed_gone_non_finite_is_frozen_and_the_others_train_bit_identically() -> None:
    seeds = (0, 1, 2)
    clean, _ = stacked_fit(seeds, 1, module_cls=StackedModule, precision="32-true")
    net = stack(TINY, seeds)
    poisoned = net.lone_state_dict(1)
    poisoned["stem.0.weight"][0, 0, 0, 0] = float("nan")
    net.load_lone_state_dict(1, poisoned)
    hurt, t = stacked_fit(seeds, 1, module_cls=StackedModule, precision="32-true", net=net)
    assert list(hurt.diverged) == [1] and hurt.diverged[1].startswith("training loss is nan at step 0 (epoch 0)")
    for i in (0, 2):
        a, b = clean.net.lone_state_dict(i), hurt.net.lone_state_dict(i)
        assert all(torch.equal(a[k], b[k]) for k in a)
    frozen = hurt.net.lone_state_dict(1)
    assert all(not v.is_floating_point() or torch.isfinite(v).all() for v in frozen.values())
    assert "s1/train/loss" not in t.callback_metrics and "s0/train/loss" in t.callback_metrics


def test_every_seed_non_finite_is_diverged() -> None:
    net = stack(TINY, (0,))
    state = net.lone_state_dict(0)
    state["fc.bias"][:] = float("inf")
    net.load_lone_state_dict(0, state)
    with pytest.raises(Diverged, match="every seed of the stack diverged"):
        stacked_fit((0,), 1, module_cls=StackedModule, precision="32-true", net=net)


def test_checkpoints_convert_both_ways_and_each_seed_resumes_where_it_stopped(tmp_path) -> None:
    seeds, plain = (0, 1), {"augment": False}  # a resumed job draws its augmentation afresh, lone or stacked
    # the reference: each seed alone for one epoch, then resumed from its own checkpoint for a second
    own = []
    for i, seed in enumerate(seeds):
        _, lt = lone_fit(seed, 1, **plain)
        lt.save_checkpoint(tmp_path / f"own{i}.ckpt")
        own.append(lone_fit(seed, 2, ckpt=str(tmp_path / f"own{i}.ckpt"), **plain)[0])
    # stacked for one epoch, then each seed alone from its lone checkpoint
    _, t = stacked_fit(seeds, 1, data=plain)
    t.save_checkpoint(tmp_path / "stack.ckpt")
    stacked = torch.load(tmp_path / "stack.ckpt", weights_only=False)
    lones = [lone_checkpoint(stacked, i) for i in range(len(seeds))]
    back = stack_checkpoints(lones)
    assert back.keys() == stacked.keys()
    for key, value in stacked["state_dict"].items():
        assert torch.equal(back["state_dict"][key], value), key
    for idx, entry in stacked["optimizer_states"][0]["state"].items():
        assert torch.equal(back["optimizer_states"][0]["state"][idx]["momentum_buffer"], entry["momentum_buffer"])
    for i, seed in enumerate(seeds):
        torch.save(lones[i], tmp_path / f"lone{i}.ckpt")
        resumed, _ = lone_fit(seed, 2, ckpt=str(tmp_path / f"lone{i}.ckpt"), **plain)
        assert same_weights_lone(resumed, own[i])
    # the seeds' own checkpoints joined, and the stack resumed from them
    joined = stack_checkpoints([torch.load(tmp_path / f"own{i}.ckpt", weights_only=False) for i in range(len(seeds))])
    torch.save(joined, tmp_path / "joined.ckpt")
    resumed, _ = stacked_fit(seeds, 2, ckpt=str(tmp_path / "joined.ckpt"), data=plain)
    for i in range(len(seeds)):
        assert same_weights(resumed, i, own[i])
    with pytest.raises(ValueError, match="different"):
        stack_checkpoints([lones[0], torch.load(tmp_path / "stack.ckpt", weights_only=False) | {"global_step": 99}])


def same_weights_lone(a: ClassificationModule, b: ClassificationModule, tol: float = 1e-10) -> bool:
    x, y = a.net.state_dict(), b.net.state_dict()
    return all(rel_err(x[k].double(), y[k].double()) <= tol for k in y)


def test_seeds_whose_data_give_unequal_batches_do_not_stack() -> None:
    data = StackedDataModule([datamodule(0), datamodule(1, limit_train=64)])
    data.setup("fit")
    with pytest.raises(ConfigError, match=r"stack: the seeds' training data give \[4, 2\] batches per epoch"):
        data.train_dataloader()
    images, labels = next(iter(data.val_dataloader()))  # the same validation sizes: these stack
    assert images.shape[:2] == labels.shape == (DATA["batch_size"], 2)
