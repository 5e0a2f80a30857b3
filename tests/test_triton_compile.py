"""Every Triton kernel launch of the wrappers compiles for sm_80 and sm_90, without a GPU.

The CPU tests run the kernels in Triton's interpreter, which never specialises: on a GPU an
int argument equal to 1 becomes a constant and one divisible by 16 gets an alignment
attribute, so code that runs in the interpreter can fail to compile there (as
``(N - 1).to(tl.int64)`` did for N = 1). ``hgrn_core.kernels.offline_compile`` records the
launches the wrappers make at the models' shapes, the segmented long-sequence path, every
option, dtype and edge length, specialises them as a GPU launch would and compiles them for
both targets (in a subprocess: the interpreter replaces ``triton.jit`` in this one).

``pytest -s`` prints the registers / spills table; ``python -m
hgrn_core.kernels.offline_compile`` prints it alone. HGRN_COMPILE_FULL=1 compiles the larger
set (the whole cross product of the HGRU options, every target for every case).
"""
import os
import re

import pytest

pytest.importorskip("triton", minversion="3.6")  # hgrn_core.backends.MIN_TRITON

from hgrn_core.kernels import offline_compile  # noqa: E402  (imports no triton itself)

FULL = os.environ.get("HGRN_COMPILE_FULL", "") not in ("", "0")
KERNELS = ("_hgru_fwd_kernel", "_hgru_bwd_kernel", "_norm_gate_fwd_kernel",
           "_norm_gate_bwd_kernel")
ARCHS = (80, 90)

# Spills tolerated on the models' path, found when this test was written: (kernel, sm,
# dtype, flag of the launch) -> bytes of spill stores / loads allowed. ptxas keeps launch A
# (SEG_A) of the fp32 backward on sm_80 at 128 registers and spills one 4-byte value
# (N = 7921: 1248 px); bf16 / fp16 (autocast, what the models run in) spill nowhere.
KNOWN_MODEL_SPILLS = {("_hgru_bwd_kernel", 80, "fp32", "SEG_A"): 4}


@pytest.fixture(scope="module")
def rows():
    return offline_compile.run_in_subprocess(full=FULL, archs=ARCHS,
                                             timeout=3600 if FULL else 900)


def _dtype(row) -> str:
    return re.search(r"\) (\w+)", row["cases"][0]).group(1)


def _failure(row) -> str:
    cases = "; ".join(row["cases"][:4]) + (" ..." if len(row["cases"]) > 4 else "")
    return f"{row['kernel']} [{row['spec']}]\n    cases: {cases}\n    {row['error']}"


def test_the_wrappers_are_not_interpreted_here():
    """The capture refuses a process whose kernels are interpreted (it needs JIT kernels)."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("Triton's interpreter is off in this process")
    with pytest.raises(RuntimeError, match="interpreter"):
        with offline_compile.recording(lambda *a: None):
            pass


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_launch_compiles(rows, kernel, arch):
    mine = [r for r in rows if r["kernel"] == kernel and r["arch"] == arch]
    assert mine, f"no launch of {kernel} was recorded for sm_{arch}"
    failed = [r for r in rows if not r["ok"] and r["arch"] == arch
              and (r["kernel"] == kernel or r["kernel"].endswith("wrapper)"))]
    assert not failed, (f"{len(failed)} specialisation(s) failed to compile for sm_{arch}:\n"
                        + "\n".join(_failure(r) for r in failed))


def test_no_spills_on_the_models_path(rows):
    """hgru forward / backward and norm_gate at the models' shapes keep everything in
    registers (``ptxas -v``: no spill stores or loads)."""
    bad = []
    for r in rows:
        if "model" not in r["groups"] or not r["ok"]:
            continue
        allowed = max([v for (k, a, dt, flag), v in KNOWN_MODEL_SPILLS.items()
                       if (k, a, dt) == (r["kernel"], r["arch"], _dtype(r))
                       and flag in r["spec"].split()[-1].split("+")] or [0])
        if max(r["spill_stores"], r["spill_loads"]) > allowed:
            bad.append(f"{r['kernel']} sm_{r['arch']}: {r['regs']} registers, spills "
                       f"{r['spill_stores']} B stored / {r['spill_loads']} B loaded "
                       f"(allowed {allowed})\n    {r['cases'][0]} [{r['spec']}]")
    assert not bad, "spills on the models' path:\n" + "\n".join(bad)


def test_the_gpu_specialisations_are_covered(rows):
    """The recorded launches do specialise as on a GPU: N = 1 and d = 1 are constants, the
    segmented launches A / B and each dtype appear, the dh0 edge of the reverse backward
    with N = 1 (the bug of 943b4de) is among them, and the 2-D op's launches (NESTED, the
    columns' ACCUMULATE) at the 2-D models' grids."""
    specs = [(r["kernel"], r["spec"]) for r in rows]  # recorded, compiled or not

    def has(kernel, *parts):
        return any(k == kernel and all(p in s for p in parts) for k, s in specs)

    for k in ("_hgru_fwd_kernel", "_hgru_bwd_kernel"):
        assert has(k, "GIVEN")                  # the public scan API on the same kernels
        assert has(k, "N=1[const]", "n_tiles=1[const]")
        assert has(k, "D=1[const]")
        assert has(k, "SEG_A") and has(k, "SEG_B")
        for arch in ARCHS:
            assert has(k, f"sm_{arch}", "N=7921 ", "SEG_B")
            # the 2-D op's row and (accumulating) column launches at the models' grids
            assert has(k, f"sm_{arch}", "N=89 ", "n_inner=89 ", "NESTED")
            assert has(k, f"sm_{arch}", "N=16[%16]", "NESTED+ACCUMULATE")
    rev_h0 = [s for k, s in specs if k == "_hgru_bwd_kernel" and "N=1[const]" in s
              and "HAS_H0" in s and "MAIN_REV" not in s]
    assert rev_h0, "no reverse backward with h0 and N = 1"
    dtypes = {_dtype(r) for r in rows if r["kernel"].startswith("_hgru")}
    assert dtypes >= {"bf16", "fp16", "fp32", "fp64"}
    for k in ("_norm_gate_fwd_kernel", "_norm_gate_bwd_kernel"):
        assert has(k, "W=75 ") and has(k, "W=768[%16]")


def test_report(rows):
    """Registers and spills of every specialisation (printed with ``pytest -s``)."""
    ok = [r for r in rows if r["ok"]]
    assert all(r["regs"] > 0 for r in ok), "ptxas -v gave no register count"
    print(f"\n{len(rows)} specialisations compiled for sm_{'/sm_'.join(map(str, ARCHS))}\n"
          + offline_compile.table(rows))
