"""The fused HGRU kernels' launch configurations: per architecture, and from a sweep's file."""
import json

import pytest
import torch

from hgrn_core.kernels import triton_hgru_configs as configs
from tools.measure.tune_hgru import recommended


def test_each_architecture_gets_its_row_or_the_nearest_older_one(monkeypatch):
    a100 = dict(configs.DEFAULT, forward=dict(configs.DEFAULT["forward"], block_t=16))
    h100 = dict(configs.DEFAULT, forward=dict(configs.DEFAULT["forward"], block_t=4))
    monkeypatch.setattr(configs, "TABLE", {(8, 0): a100, (9, 0): h100})
    assert configs.for_capability((8, 0)) is a100
    assert configs.for_capability((8, 9)) is a100       # RTX 4090: the A100's row, not H100's
    assert configs.for_capability((9, 0)) is h100
    assert configs.for_capability((10, 0)) is configs.DEFAULT
    assert configs.for_capability((7, 5)) is configs.DEFAULT
    assert configs.gpu_config("forward", (8, 6))["block_t"] == 16
    assert configs.gpu_config("forward", (9, 0))["block_t"] == 4


def test_every_row_names_what_measured_it_and_is_complete():
    for cap, row in configs.TABLE.items():
        assert isinstance(row["measured"], str) and row["measured"], cap
        for pass_name in ("forward", "backward"):
            cfg = row[pass_name]
            assert set(cfg) == set(configs.KEYS), (cap, pass_name)
            assert cfg["block_d"] == 32 * cfg["vec"] * cfg["num_warps"], (cap, pass_name)


def test_a_sweeps_file_overrides_the_table(monkeypatch, tmp_path):
    path = tmp_path / "tune_hgru.json"
    path.write_text(json.dumps({"rows": [], "recommended": {
        "forward": {"block_t": 16, "vec": 4, "num_warps": 1, "prefetch": False},
        "backward": {"block_t": 8, "block_d": 64, "vec": 2, "num_warps": 1}}}))
    monkeypatch.setenv(configs.ENV_VAR, str(path))
    fwd = configs.gpu_config("forward", (9, 0))
    assert (fwd["block_t"], fwd["vec"], fwd["block_d"], fwd["prefetch"]) == (16, 4, 128, False)
    assert fwd["num_stages"] == configs.DEFAULT["forward"]["num_stages"]   # kept from the row
    assert configs.gpu_config("backward", (8, 0))["block_t"] == 8


def test_a_plain_object_file_and_bad_files(monkeypatch, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"backward": {"block_t": 2}}))
    monkeypatch.setenv(configs.ENV_VAR, str(path))
    assert configs.gpu_config("backward", (9, 0))["block_t"] == 2
    assert configs.gpu_config("forward", (9, 0)) == dict(configs.for_capability((9, 0))["forward"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forward": {"blocks": 2}}))
    monkeypatch.setenv(configs.ENV_VAR, str(bad))
    with pytest.raises(ValueError, match=r"HGRN_HGRU_CONFIG=.*unknown launch parameters \['blocks'\]"):
        configs.gpu_config("forward", (9, 0))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"rows": [], "recommended": {}}))
    monkeypatch.setenv(configs.ENV_VAR, str(empty))
    with pytest.raises(ValueError, match="expected a tune_hgru.json"):
        configs.gpu_config("forward", (9, 0))


def test_the_kernels_read_the_table_of_the_devices_capability(monkeypatch):
    pytest.importorskip("triton", minversion="3.6")
    from hgrn_core.kernels import triton_hgru
    row = dict(configs.DEFAULT, backward=dict(configs.DEFAULT["backward"], block_t=16))
    monkeypatch.setattr(configs, "TABLE", {(8, 0): row})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert triton_hgru.gpu_config(torch.device("cuda"), bwd=True)["block_t"] == 16


def _row(pass_, shape, block_t, ms, status="ok"):
    cfg = dict(block_t=block_t, vec=2, block_d=64, num_warps=1, prefetch=True)
    return dict(pass_=pass_, shape=list(shape), config=cfg, status=status, ms=ms)


def test_the_recommendation_is_best_over_every_shape_and_skips_mismatches():
    a, b = (256, 256, 384), (8, 16384, 384)
    rows = [_row("forward", a, 4, 1.0), _row("forward", b, 4, 3.0),     # 1.0 and 3.0 of the best
            _row("forward", a, 8, 1.2), _row("forward", b, 8, 2.0),     # 1.2 and 2.0: the least geometric mean
            _row("forward", a, 16, 0.9, "mismatch"), _row("forward", b, 16, 1.0),
            _row("backward", a, 4, 2.0), _row("backward", b, 4, None, "oom")]
    rec = recommended(rows)
    assert rec["forward"]["block_t"] == 8
    assert rec["backward"]["block_t"] == 4   # the only one measured on the shapes it ran at
    assert recommended([]) == {}
