"""The model library: golden counts, analytic complexity, width solver, block forms."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
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
    spec = ModelSpec(template="cifar", stage_blocks=(3, 3, 3), cardinality=cardinality, width=64, num_classes=10, image_size=32)
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
    ModelSpec(template="cifar", stage_blocks=(2, 2, 2), cardinality=16, width=2, num_classes=100, image_size=32, width_scale=0.5),
    ModelSpec(template="cifar", stage_blocks=(1, 1, 1), cardinality=32, width=6, num_classes=10, in_channels=1, image_size=28, width_scale=0.5),
    ModelSpec(template="cifar", stage_blocks=(1, 1, 1), cardinality=3, width=5, num_classes=7, in_channels=1, image_size=27, residual=False),
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
    spec = spec_from_config({"depth": 50, "cardinality": 2, "width": "auto", "reference": {"cardinality": 1, "width": 100}})
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
    ModelSpec(template="cifar", stage_blocks=(1, 1, 1), cardinality=4, width=4, num_classes=10, image_size=16, width_scale=0.25),
    ModelSpec(template="cifar", stage_blocks=(2, 1, 1), cardinality=2, width=6, num_classes=10, in_channels=1, image_size=12, width_scale=0.25, residual=False),
    ModelSpec(template="imagenet", stage_blocks=(1, 1, 1, 1), cardinality=8, width=2, num_classes=5, image_size=32, width_scale=0.125),
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
        out.append({k: v.clone() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))})
    return out


@pytest.mark.parametrize("spec", EQUIVALENCE, ids=lambda s: f"{s.template}-{s.cardinality}x{s.width}d-res{int(s.residual)}")
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
        assert_close_to_scale(dict(other.named_parameters())[name].grad, dict(grouped.named_parameters())[name].grad, name)


def test_convert_rejects_unknown_form():
    with pytest.raises(ConfigError, match="model.block='d'"):
        convert(build(EQUIVALENCE[0]), "d")
