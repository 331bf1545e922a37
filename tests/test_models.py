"""The model library: golden counts, analytic complexity, width solver, block forms."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from resnext_lab.models import ConfigError, ModelSpec, build, complexity, convert, spec_from_config
from resnext_lab.models.spec import IMAGENET_STAGE_BLOCKS


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# torchvision builder -> the same architecture in our vocabulary
TORCHVISION = {
    "resnet50": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[50]),
    "resnet101": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[101]),
    "resnet152": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[152]),
    "resnext50_32x4d": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[50], cardinality=32, width=4),
    "resnext101_32x8d": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[101], cardinality=32, width=8),
    "resnext101_64x4d": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[101], cardinality=64, width=4),
    "wide_resnet50_2": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[50], width=128),
    "wide_resnet101_2": dict(stage_blocks=IMAGENET_STAGE_BLOCKS[101], width=128),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_param_counts_equal_torchvision(name):
    reference = n_params(getattr(torchvision.models, name)())
    spec = ModelSpec(**TORCHVISION[name])
    assert complexity(spec)["params"] == reference
    assert n_params(build(spec)) == reference


def test_state_dict_shapes_equal_torchvision():
    """Same tensors, layer by layer, not only the same total."""
    ours = build(ModelSpec(**TORCHVISION["resnext50_32x4d"])).state_dict()
    theirs = torchvision.models.resnext50_32x4d().state_dict()
    assert sorted(v.shape for v in ours.values()) == sorted(v.shape for v in theirs.values())


def test_paper_headline_counts():
    r50 = complexity(ModelSpec())
    x50 = complexity(ModelSpec(cardinality=32, width=4))
    assert r50["params"] == 25_557_032 and round(r50["flops"] / 1e9, 1) == 4.1
    assert x50["params"] == 25_028_904 and round(x50["flops"] / 1e9, 2) == 4.23


@pytest.mark.parametrize(("cardinality", "params_m"), [(8, 34.4), (16, 68.1)])
def test_resnext29_cifar_params_match_paper(cardinality, params_m):
    spec = ModelSpec(
        template="cifar", stage_blocks=(3, 3, 3), cardinality=cardinality, width=64, num_classes=10, image_size=32
    )
    assert complexity(spec)["params"] / 1e6 == pytest.approx(params_m, rel=2e-3)


def conv_linear_macs(model: torch.nn.Module, spec: ModelSpec) -> int:
    x = torch.randn(1, spec.in_channels, spec.image_size, spec.image_size)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    counts = counter.get_flop_counts()["Global"]
    ops = {k: v for k, v in counts.items() if "conv" in str(k) or "mm" in str(k)}
    assert sum(ops.values()) == sum(counts.values())  # nothing else was counted
    return sum(ops.values()) // 2  # FLOPs counted as 2 per multiply-add


DESIGN_POINTS = [
    ModelSpec(template="imagenet", stage_blocks=(1, 1, 1, 1), cardinality=4, width=8, image_size=64),
    ModelSpec(template="imagenet", stage_blocks=(2, 1, 2, 1), cardinality=1, width=16, image_size=57, residual=False),
    ModelSpec(template="imagenet", stage_blocks=(1, 2, 1, 1), cardinality=8, width=3, image_size=96, width_scale=0.25),
    ModelSpec(template="cifar", stage_blocks=(1, 1, 1), cardinality=2, width=40, num_classes=10, image_size=32),
    ModelSpec(
        template="cifar",
        stage_blocks=(2, 2, 2),
        cardinality=16,
        width=2,
        num_classes=100,
        image_size=32,
        width_scale=0.5,
    ),
    ModelSpec(
        template="cifar",
        stage_blocks=(1, 1, 1),
        cardinality=32,
        width=6,
        num_classes=10,
        in_channels=1,
        image_size=28,
        width_scale=0.5,
    ),
    ModelSpec(
        template="cifar",
        stage_blocks=(1, 1, 1),
        cardinality=3,
        width=5,
        num_classes=7,
        in_channels=1,
        image_size=27,
        residual=False,
    ),
    ModelSpec(
        template="cifar",
        stage_blocks=(2, 1, 1),
        cardinality=8,
        width=2,
        num_classes=10,
        in_channels=1,
        image_size=28,
        width_scale=0.25,
        stem_stride=2,
    ),
    ModelSpec(
        template="cifar",
        stage_blocks=(1, 1, 1),
        cardinality=1,
        width=4,
        num_classes=10,
        in_channels=1,
        image_size=27,
        stem_stride=3,
    ),
]


@pytest.mark.parametrize("spec", DESIGN_POINTS, ids=lambda s: f"{s.template}-{s.depth}-{s.cardinality}x{s.width}d")
def test_analytic_complexity_matches_built_network(spec):
    model = build(spec)
    assert complexity(spec)["params"] == n_params(model)
    assert complexity(spec)["flops"] == conv_linear_macs(model, spec)


@pytest.mark.parametrize("block", ["aggregated", "concat"])
def test_block_forms_have_the_same_complexity(block):
    spec = DESIGN_POINTS[3]
    form = dataclasses.replace(spec, block=block)
    model = build(form)
    assert n_params(model) == complexity(spec)["params"] == complexity(form)["params"]
    assert conv_linear_macs(model, form) == complexity(spec)["flops"]


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize(("match", "expected"), [("params", [64, 40, 24, 14, 4])])
def test_width_solver_reproduces_table2(depth, match, expected):
    got = [
        spec_from_config({"depth": depth, "cardinality": c, "width": "auto", "match": match}).width
        for c in (1, 2, 4, 8, 32)
    ]
    assert got == expected


def test_width_solver_by_flops_is_closest():
    ref = ModelSpec(stage_blocks=IMAGENET_STAGE_BLOCKS[50])
    spec = spec_from_config({"depth": 50, "cardinality": 8, "width": "auto", "match": "flops"})
    target = complexity(ref)["flops"]
    gap = abs(complexity(spec)["flops"] - target)
    for d in (spec.width - 1, spec.width + 1):
        assert gap <= abs(complexity(dataclasses.replace(spec, width=d))["flops"] - target)


def test_width_solver_custom_reference_and_infeasible():
    spec = spec_from_config(
        {"depth": 50, "cardinality": 2, "width": "auto", "reference": {"cardinality": 1, "width": 100}}
    )
    assert spec.width > 40
    with pytest.raises(ConfigError, match=r"model.width=auto: .*cardinality=4096"):
        spec_from_config({"depth": 50, "cardinality": 4096, "width": "auto"})


@pytest.mark.parametrize(
    ("cfg", "pattern"),
    [
        ({"depth": 50, "cardinality": 0}, r"model.cardinality=0: must be an integer >= 1"),
        ({"depth": 50, "width": 2.5}, r"model.width=2.5: must be an integer >= 1"),
        ({"depth": 50, "width": 0}, r"model.width=0"),
        ({"depth": 51}, r"model.depth=51: the imagenet template builds depth 50, 101, 152, 200"),
        ({"template": "cifar", "depth": 30}, r"model.depth=30: the cifar template builds depth 9n\+2"),
        ({"depth": 50, "block": "fancy"}, r"model.block='fancy': must be one of grouped, aggregated, concat"),
        ({"template": "vgg"}, r"model.template='vgg'"),
        ({"stage_blocks": [1, 2]}, r"model.stage_blocks=\[1, 2\]: the imagenet template takes 4 integers"),
        ({"depth": 50, "residual": "maybe"}, r"model.residual='maybe'"),
        ({"depth": 50, "width": "auto", "match": "speed"}, r"model.match='speed'"),
        ({"depth": 50, "init": "xavier"}, r"model.init='xavier': must be one of official, per_path"),
        ({"depth": 50, "zero_init_last_bn": 1}, r"model.zero_init_last_bn=1: must be true or false"),
        ({"depth": 50, "zero_init_last_bn": True, "residual": False}, r"zero_init_last_bn=true needs model.residual"),
        ({"depth": 50, "zero_init_last_bn": True, "residual": False, "width": "auto"}, r"zero_init_last_bn=true needs"),
    ],
)
def test_bad_model_config_is_one_clear_line(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        spec_from_config(cfg)
    assert "\n" not in str(info.value)


def test_stage_blocks_give_depth():
    spec = spec_from_config({"depth": None, "stage_blocks": [1, 1, 1, 1], "cardinality": 2, "width": 4})
    assert spec.depth == 14


# --- the three equivalent forms (paper Fig. 3) --------------------------------------------

EQUIVALENCE = [
    ModelSpec(
        template="cifar",
        stage_blocks=(1, 1, 1),
        cardinality=4,
        width=4,
        num_classes=10,
        image_size=16,
        width_scale=0.25,
    ),
    ModelSpec(
        template="cifar",
        stage_blocks=(2, 1, 1),
        cardinality=2,
        width=6,
        num_classes=10,
        in_channels=1,
        image_size=12,
        width_scale=0.25,
        residual=False,
    ),
    ModelSpec(
        template="imagenet",
        stage_blocks=(1, 1, 1, 1),
        cardinality=8,
        width=2,
        num_classes=5,
        image_size=32,
        width_scale=0.125,
    ),
]


def assert_close_to_scale(actual, expected, what=""):
    """Equal up to float32 rounding, measured against the tensor's own scale.

    Per-element relative tolerances fail on near-zero entries, whose rounding
    error comes from the large terms they were summed from.
    """
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 1e-4 * scale + 1e-7, what


def _forward_backward(model, x):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _grouped_grads(model):
    """Gradients of every block expressed as grouped-form tensors (same layout as weights)."""
    out = []
    for block in model.blocks():
        saved = {n: p.data for n, p in block.named_parameters()}
        for _n, p in block.named_parameters():
            p.data = p.grad
        state = block.grouped_state()
        for n, p in block.named_parameters():
            p.data = saved[n]
        out.append(
            {
                k: v.clone()
                for k, v in state.items()
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
            }
        )
    return out


@pytest.mark.parametrize(
    "spec", EQUIVALENCE, ids=lambda s: f"{s.template}-{s.cardinality}x{s.width}d-res{int(s.residual)}"
)
@pytest.mark.parametrize("target", ["aggregated", "concat"])
@pytest.mark.parametrize("train", [True, False])
def test_converted_forms_give_equal_outputs_and_gradients(spec, target, train):
    torch.manual_seed(0)
    grouped = build(spec)
    # non-trivial BN statistics and affine parameters, so eval mode checks them too
    with torch.no_grad():
        for m in grouped.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    grouped.train(train)
    other = convert(grouped, target)
    assert other.spec.block == target and other.training == train
    # a round trip returns the very same tensors
    back = convert(other, "grouped")
    for (k, v), (k2, v2) in zip(grouped.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v2, v, rtol=0, atol=0)
    x = torch.randn(4, spec.in_channels, spec.image_size, spec.image_size)
    out_a, _ = _forward_backward(grouped, x)
    out_b, _ = _forward_backward(other, x)
    assert_close_to_scale(out_b, out_a, "outputs")
    for ga, gb in zip(_grouped_grads(grouped), _grouped_grads(other), strict=True):
        for k in ga:
            assert_close_to_scale(gb[k], ga[k], k)
    # stem and fc gradients too
    for name in ("stem.0.weight", "fc.weight"):
        assert_close_to_scale(
            dict(other.named_parameters())[name].grad, dict(grouped.named_parameters())[name].grad, name
        )


def test_convert_rejects_unknown_form():
    with pytest.raises(ConfigError, match="model.block='d'"):
        convert(build(EQUIVALENCE[0]), "d")


# --- initialisation: one function in every form, and the init named in the spec -------------------

FORMS_SPEC = EQUIVALENCE[0]  # cifar, C=4


def _build_at(spec, seed):
    torch.manual_seed(seed)
    return build(spec)


@pytest.mark.parametrize("init", ["official", "per_path"])
@pytest.mark.parametrize("train", [True, False])
def test_forms_built_at_one_seed_are_one_function(init, train):
    """`build` draws every form as the grouped one: a gap between forms cannot come from their init."""
    spec = dataclasses.replace(FORMS_SPEC, init=init)
    x = torch.randn(4, spec.in_channels, spec.image_size, spec.image_size)
    models, after = {}, {}
    for b in ("grouped", "aggregated", "concat"):
        models[b] = _build_at(dataclasses.replace(spec, block=b), 0)
        after[b] = torch.rand(3)  # the RNG is left in the same state too
    logits = {b: m.train(train)(x).detach() for b, m in models.items()}
    for b in ("aggregated", "concat"):
        assert_close_to_scale(logits[b], logits["grouped"], b)
        torch.testing.assert_close(after[b], after["grouped"], rtol=0, atol=0)


def _sgd_losses(model, x, y, steps=20):
    # a small lr: at 0.01-0.05 this tiny net's training amplifies a 1e-7 rounding difference about
    # tenfold a step, between two copies of one form as much as between forms
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def test_forms_train_alike_from_one_seed():
    spec = FORMS_SPEC
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, spec.in_channels, spec.image_size, spec.image_size, generator=gen)
    y = torch.randint(0, spec.num_classes, (8,), generator=gen)
    losses = {
        b: _sgd_losses(_build_at(dataclasses.replace(spec, block=b), 0).train(), x, y)
        for b in ("grouped", "aggregated", "concat")
    }
    assert losses["grouped"][-1] < 0.5 * losses["grouped"][0]  # it did train
    for b in ("aggregated", "concat"):
        torch.testing.assert_close(losses[b], losses["grouped"], rtol=1e-4, atol=0)


# wide enough to measure a std: the first stage's grouped 3x3 has 8 groups of 32 channels
INIT_SPEC = ModelSpec(template="cifar", stage_blocks=(1, 1, 1), cardinality=8, width=32, num_classes=10, image_size=8)


@pytest.mark.parametrize("init", ["official", "per_path"])
def test_each_conv_is_drawn_with_its_inits_std(init):
    model = _build_at(dataclasses.replace(INIT_SPEC, init=init), 0)
    grouped = model.blocks()[0].conv2[0]
    assert (grouped.groups, grouped.out_channels) == (8, 256)
    per_conv = 9 * 256 if init == "official" else 9 * 256 / 8
    # 74k draws: the sample std is within 0.3% of the true one (one sigma)
    assert grouped.weight.std().item() == pytest.approx((2 / per_conv) ** 0.5, rel=0.02)
    ungrouped = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert len(ungrouped) == 10  # stem, and each block's two 1x1s and shortcut
    for conv in ungrouped:
        fan_out = conv.out_channels * math.prod(conv.kernel_size)
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((bn.weight == 1).all() and (bn.bias == 0).all() for bn in bns)


def test_official_init_is_torchvisions_draw_for_draw():
    """`official` reproduces kaiming_normal_(mode="fan_out") exactly, so earlier runs' seeds still hold."""
    ours = build(INIT_SPEC)
    reference = copy.deepcopy(ours)
    torch.manual_seed(5)
    ours.reset_parameters()
    torch.manual_seed(5)
    for m in reference.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), reference.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0, msg=k)


def test_per_path_changes_only_grouped_convs():
    official = _build_at(INIT_SPEC, 0).state_dict()
    per_path = _build_at(dataclasses.replace(INIT_SPEC, init="per_path"), 0).state_dict()
    changed = {k for k in official if not torch.equal(official[k], per_path[k])}
    assert changed == {f"stages.{i}.0.conv2.0.weight" for i in range(3)}


@pytest.mark.parametrize("block", ["grouped", "aggregated", "concat"])
@pytest.mark.parametrize("zero", [True, False])
def test_zero_init_last_bn(block, zero):
    spec = dataclasses.replace(FORMS_SPEC, block=block, zero_init_last_bn=zero)
    model = _build_at(spec, 0)
    for b in model.blocks():
        assert (b.last_bn().weight == (0 if zero else 1)).all()
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    grouped = _build_at(dataclasses.replace(spec, block="grouped"), 0)
    assert_close_to_scale(model(x).detach(), grouped(x).detach())


def test_init_settings_are_recorded_and_change_no_count():
    spec = dataclasses.replace(INIT_SPEC, init="per_path", zero_init_last_bn=True)
    assert spec.summary()["init"] == "per_path" and spec.summary()["zero_init_last_bn"] is True
    assert ModelSpec().summary()["init"] == "official" and ModelSpec().summary()["zero_init_last_bn"] is False
    assert complexity(spec) == complexity(INIT_SPEC)


def test_init_settings_compose_as_plain_overrides():
    from resnext_lab.job import compose

    def spec(*overrides):
        return spec_from_config(OmegaConf.to_container(compose(list(overrides)).model, resolve=True))

    assert (spec().init, spec().zero_init_last_bn) == ("official", False)
    got = spec("model.init=per_path", "model.zero_init_last_bn=true")
    assert (got.init, got.zero_init_last_bn) == ("per_path", True)
    with pytest.raises(ConfigError, match=r"^model.init='fancy': must be one of official, per_path$"):
        spec("model.init=fancy")
    with pytest.raises(ConfigError, match=r"^model.zero_init_last_bn=true needs model.residual=true"):
        spec("model.zero_init_last_bn=true", "model.residual=false")


def test_stem_stride_is_the_cifar_templates_alone():
    with pytest.raises(ConfigError, match=r"^model.stem_stride=2: only the cifar template"):
        spec_from_config({"template": "imagenet", "depth": 50, "stem_stride": 2})
    with pytest.raises(ConfigError, match=r"^model.stem_stride=0: must be an integer >= 1"):
        spec_from_config({"template": "cifar", "depth": 11, "stem_stride": 0})
    strided = spec_from_config({"template": "cifar", "depth": 11, "stem_stride": 2, "image_size": 28})
    assert strided.summary()["stem_stride"] == 2
    assert build(strided)(torch.randn(2, 3, 28, 28)).shape == (2, 1000)
