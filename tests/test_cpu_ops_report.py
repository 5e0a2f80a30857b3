"""The CPU op report (hgrn-benchmark --report cpu-ops): every backend's four passes timed on a
tiny layer, the bytes and ratios derived from the times, and the markdown."""
from __future__ import annotations

import pytest

try:  # installed: tools/ is the package hgrn_tools
    from hgrn_tools.measure import cpu_ops
except ImportError:  # a checkout
    from tools.measure import cpu_ops


def test_a_tiny_layer_on_every_cpu_backend():
    res = cpu_ops.measure(rounds=2, threads=1, shapes=(("tiny", 2, 9),))
    bes = res["backends"]
    assert bes[0] == "torch" and len(set(bes)) == len(bes)
    assert {(r["op"], r["pass_"]) for r in res["rows"]} == set(cpu_ops.FLOOR)
    for r in res["rows"]:
        assert r["floor_bytes"] == 2 * 9 * cpu_ops.FLOOR[r["op"], r["pass_"]]
        for be in bes:
            assert r[be] > 0
            assert r[f"{be} GB/s"] == pytest.approx(r["floor_bytes"] / r[be] / 1e6)
        assert r["of copy"] == pytest.approx(r[f"{bes[-1]} GB/s"] / res["copy_gbs"])
    env = dict(cpu="cpu", threads=1, torch="t", commit="abc", date="today", rounds=2)
    md = cpu_ops.format_markdown(dict(env=env, **res))
    assert "| 2, 9, 192 (tiny) | `hgru` | forward |" in md
    assert md.count("\n| 2, 9, 192") == 4


def test_the_layer_calls_agree_between_backends():
    """The tensors each backend is timed on are the same layer: same outputs."""
    import torch
    bes = cpu_ops.cpu_backends()
    outs = {be: {k: fn() for k, fn in cpu_ops.make_calls(2, 5, be).items()} for be in bes}
    for key in outs["torch"]:
        a, b = outs["torch"][key][0], outs[bes[-1]][key][0]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_measure_restores_the_thread_count():
    import torch
    before = torch.get_num_threads()
    cpu_ops.measure(rounds=1, threads=1 if before > 1 else 2, shapes=(("tiny", 1, 3),))
    assert torch.get_num_threads() == before
