"""The benchmark: byte and FLOP counts against hand counts, and an end-to-end CPU run
that writes valid JSON."""

import json

import pytest
import torch

from fastddpm import bench
from fastddpm.benchlib import kernel_bytes, unet_flops


def test_kernel_bytes_hand_counts():
    n = 1024 * 3 * 32 * 32
    assert kernel_bytes("q_sample", (1024, 3, 32, 32), torch.float32) == 2 * n * 4  # read x_0, write x_t
    assert kernel_bytes("q_sample", (1024, 3, 32, 32), torch.bfloat16) == 2 * n * 2
    # reverse step, bf16 model: read x (4) + ε̂ (2), write x (4) + the bf16 copy (2)
    assert kernel_bytes("reverse_step", (1024, 3, 32, 32), torch.bfloat16) == n * 12
    assert kernel_bytes("reverse_step", (1024, 3, 32, 32), torch.float32) == n * 16
    # loss: forward reads ε̂, backward reads ε̂ and writes the gradient
    assert kernel_bytes("loss", (2, 3, 4, 5), torch.float16) == 3 * 120 * 2
    with pytest.raises(ValueError, match="op: expected"):
        kernel_bytes("add_noise", (1, 1, 1, 1), torch.float32)


def test_flop_count_hand_count():
    # a 3x3 conv, 3 -> 8 channels on 16x16 (2 FLOP per multiply-add), then a 1x1 conv 8 -> 3
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 1))
    model = lambda x, t: net(x)  # noqa: E731
    assert unet_flops(model, (3, 16, 16), "cpu") == 2 * 3 * 8 * 9 * 256 + 2 * 8 * 3 * 256


@pytest.mark.slow
def test_cpu_run_end_to_end_writes_valid_json(tmp_path):
    path = tmp_path / "bench.json"
    rep = bench.main(["--quick", "--device", "cpu", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["schema"] == bench.SCHEMA and data == json.loads(json.dumps(rep, default=str))
    assert set(data) >= {"env", "device", "kernels", "sampler", "train", "notes"}
    assert {"torch", "triton", "python", "commit", "date"} <= set(data["env"])
    assert any("not the product's target" in n for n in data["notes"])
    ops = {(r["op"], r["impl"]) for r in data["kernels"]}
    assert ops == {(o, i) for o in ("q_sample", "reverse_step", "loss") for i in ("fused", "eager", "compiled")}
    for r in data["kernels"]:
        assert r["median_ms"] > 0 and r["gbs"] > 0 and r["bytes"] == kernel_bytes(r["op"], r["shape"], getattr(torch, r["dtype"]))
    for r in data["sampler"]:
        for key in ("unet_ms", "sampler_ms", "reference_ms", "sampler_images_per_s", "flops_per_image", "sampler_compile_s"):
            assert isinstance(r[key], (int, float)) and r[key] > 0, key
    assert [r["impl"] for r in data["train"]] == ["fused", "reference"]
    assert all(r["images_per_s"] > 0 for r in data["train"])
