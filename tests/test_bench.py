"""The benchmark: a tiny CPU run end to end, the report's shape, and the checks that guard its ratios."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch
import torchvision

from resnext_lab.models import ModelSpec, build, complexity
from resnext_lab.tools import bench

TINY = bench.settings_for("cpu", "tiny")
MEASUREMENT_KEYS = {"label", "params", "images_per_s", "window_images_per_s", "peak_memory_mb", "first_step_s"}


@pytest.fixture(scope="module")
def report() -> dict:
    measured = bench.run(TINY, ["resnet50", "proxy", "loop_overhead"], log=lambda _: None)
    return json.loads(json.dumps(measured))  # what --out writes, read back


def test_report_describes_the_run(report):
    assert report["schema_version"] == bench.SCHEMA_VERSION
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["device"]["threads"] == TINY.threads
    assert {"python", "torch", "torchvision", "pytorch-lightning"} <= report["versions"].keys()
    assert report["settings"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert [r["case"] for r in report["results"]] == ["resnet50", "proxy_epoch", "loop_overhead"]


def test_figures_come_from_the_timed_windows(report):
    for row in report["results"]:
        assert row.keys() >= {"case", "group", "batch", "image_size", "flops", "ours", "baseline", "ratio", "extra"}
        for m in (row["ours"], row["baseline"]):
            assert m.keys() == MEASUREMENT_KEYS
            assert all(rate > 0 and math.isfinite(rate) for rate in m["window_images_per_s"])
            assert m["images_per_s"] == statistics.median(m["window_images_per_s"])
            assert m["peak_memory_mb"] is None  # GPUs only
        paired = zip(row["ours"]["window_images_per_s"], row["baseline"]["window_images_per_s"], strict=True)
        assert row["ratio"] == statistics.median(a / b for a, b in paired)


def test_torchvision_pair_is_the_same_network(report):
    row = report["results"][0]
    assert row["ours"]["params"] == row["baseline"]["params"] == 25_557_032
    assert row["baseline"]["label"] == "torchvision resnet50"
    assert len(row["ours"]["window_images_per_s"]) == TINY.windows
    assert row["flops"] == complexity(ModelSpec(image_size=TINY.imagenet_image_size))["flops"]


def test_proxy_epoch_compares_lightning_with_a_plain_loop(report):
    row = report["results"][1]
    extra = row["extra"]
    assert row["group"] == "proxy" and row["batch"] == TINY.proxy_batch and row["image_size"] == 28
    assert extra["steps_per_epoch"] == TINY.proxy_images // TINY.proxy_batch
    assert len(row["ours"]["window_images_per_s"]) == TINY.proxy_epochs
    assert extra["overhead_pct"] == pytest.approx(100 * (1 / row["ratio"] - 1))
    assert extra["epoch_s"] == pytest.approx(extra["steps_per_epoch"] * TINY.proxy_batch / row["ours"]["images_per_s"])
    assert extra["host_syncs_per_step"]["plain"] == 0  # the plain loop never reads a value back
    assert extra["host_syncs_per_step"]["lightning"] == 0  # nothing in the module reads a value back per step
    assert "proxy_epoch" in bench.format_table(report)


def test_loop_overhead_is_host_time_per_step(report):
    row = report["results"][2]
    us = row["extra"]["us_per_step"]
    assert row["extra"]["steps_per_epoch"] == TINY.overhead_steps
    assert us["lightning"] > 0 and us["plain"] > 0
    assert us["plain"] / us["lightning"] == pytest.approx(
        statistics.median(row["ours"]["window_images_per_s"])
        / statistics.median(row["baseline"]["window_images_per_s"])
    )


def test_a_mismatched_pair_is_refused():
    with pytest.raises(bench.BenchError, match="not the same architecture"):
        bench.check_same_params(build(ModelSpec()), torchvision.models.resnext50_32x4d(), "resnet50")


def test_pairs_are_checked_before_anything_is_timed(monkeypatch):
    monkeypatch.setitem(bench.TORCHVISION_PAIRS, "resnet50", ModelSpec(cardinality=32, width=4))
    from resnext_lab.tools.bench import cases

    monkeypatch.setattr(cases, "measure_group", lambda *a, **k: pytest.fail("timed a mismatched pair"))
    with pytest.raises(bench.BenchError, match="resnet50: ours has 25,028,904 parameters"):
        bench.torchvision_case("resnet50", TINY)


def test_host_syncs_counts_what_makes_a_gpu_host_wait():
    x = torch.arange(-2.0, 3.0)
    counter = bench.HostSyncs()
    with counter:
        x.sum().item()  # not counted: inactive
        counter.active = True
        x.sum().item()
        if x.max() > 0:  # bool() of a tensor
            pass
        x[x > 0]  # boolean mask
        torch.unique(x)
        (x * 2).add_(1).relu()  # nothing to wait for
    assert counter.count == 4
    assert all("test_bench.py" in site for site in counter.sites)


def test_unknown_case_is_refused():
    with pytest.raises(bench.BenchError, match="unknown case"):
        bench.run(TINY, ["resnet18"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cli_refuses_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda" in capsys.readouterr().err


def test_alignment_times_8x16d_against_8x14d() -> None:
    """The check of the 8x14d explanation: the aligned neighbour does more work, timed against 8x14d in one run."""
    (row,) = json.loads(json.dumps(bench.run(TINY, ["alignment"], log=lambda _: None)))["results"]
    assert row["case"] == "resnet50_8x16d" and row["group"] == "alignment"
    assert row["baseline"]["label"] == "ResNeXt-50 8x14d" and row["ours"]["label"] == "ResNeXt-50 8x16d"
    assert row["flops"] > complexity(ModelSpec(cardinality=8, width=14, image_size=TINY.imagenet_image_size))["flops"]
    assert row["ours"]["params"] > row["baseline"]["params"]


def test_fp32_and_bf16_side_by_side_as_fractions_of_the_matmul_peak():
    """`make bench` on CPU: both precisions, and each figure against the matmul peak of its precision."""
    reports = {
        name: json.loads(
            json.dumps(bench.run(dataclasses.replace(TINY, bf16=name == "bf16"), ["resnet50"], log=lambda _: None))
        )
        for name in ("fp32", "bf16")
    }
    assert [r["settings"]["bf16"] for r in reports.values()] == [False, True]
    peaks = {name: bench.matmul_peak("cpu", name == "bf16", n=256, seconds=0.05) for name in reports}
    assert all(p > 0 and math.isfinite(p) for p in peaks.values())
    table = bench.format_precisions(reports, peaks).splitlines()
    assert "fp32 %peak" in table[1] and table[2].split()[0] == "resnet50"
    row = reports["bf16"]["results"][0]
    expected = row["ours"]["images_per_s"] * 6 * row["flops"] / 1e9 / peaks["bf16"]
    assert bench.fraction_of_peak(row, peaks["bf16"]) == pytest.approx(expected)
    assert f"{100 * expected:.1f}%" in table[2]


def test_stacking_case_times_each_stack_against_lone_networks_in_seed_images_per_s():
    from resnext_lab.tools.bench.stacking import cells

    settings = dataclasses.replace(TINY, stack_sizes=(1, 3), windows=2)
    rows = bench.run(settings, ["stacking"], log=lambda _: None)["results"]
    specs = cells("cpu")
    assert [(r["extra"]["cell"], r["extra"]["stack"]) for r in rows] == [(s.name, n) for s in specs for n in (1, 3)]
    assert [s.name for s in specs] == ["ResNet-29 1x16d", "ResNeXt-29 32x1d"]  # table3's cpu cells, 14x14 maps
    for row, (spec, size) in zip(rows, [(s, n) for s in specs for n in (1, 3)], strict=True):
        stacked, lone = row["ours"], row["baseline"]
        assert stacked["params"] == size * lone["params"] == size * sum(p.numel() for p in build(spec).parameters())
        assert row["batch"] == settings.stack_batch and row["flops"] == complexity(spec)["flops"]
        assert len(stacked["window_images_per_s"]) == len(lone["window_images_per_s"]) == settings.windows
        paired = zip(stacked["window_images_per_s"], lone["window_images_per_s"], strict=True)
        assert row["ratio"] == statistics.median(a / b for a, b in paired)
    assert all(r["case"].startswith("stack_cpu_") for r in rows) and "stack_cpu_32x1d_S3" in bench.format_table(
        {
            "settings": dataclasses.asdict(settings),
            "device": {"name": "cpu", "type": "cpu", "threads": 1},
            "versions": {"torch": torch.__version__},
            "results": rows,
        }
    )


def test_stacking_budget_leaves_larger_stacks_out():
    settings = dataclasses.replace(TINY, stack_sizes=(1, 2), stack_budget_s=1e-9, windows=1)
    said: list[str] = []
    rows = bench.run(settings, ["stacking"], log=said.append)["results"]
    assert [r["extra"]["stack"] for r in rows] == [1, 1]  # each cell's first stack, then the budget is spent
    assert any("budget spent" in line for line in said)


def test_stacking_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--only", "stacking", "--stack-sizes", "0,2"])
    assert "--stack-sizes 0,2: integers >= 1" in capsys.readouterr().err
