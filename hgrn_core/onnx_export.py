"""ONNX export of the hgrn models: translations of ``hgrn::hgru``, ``hgrn::hgru2d`` and
``hgrn::norm_gate`` into standard ONNX operators, for both of ``torch.onnx.export``'s
exporters.

    from hgrn_core.onnx_export import export_onnx, onnx_translation_table
    program = export_onnx(model, torch.randn(2, 3, 224, 224), "model.onnx")
    # or plainly, once hgrn_core is imported (both exporters; timm's onnx_export.py):
    torch.onnx.export(model, (x,), "model.onnx", dynamo=True)     # torch.export based
    torch.onnx.export(model, (x,), "model.onnx", dynamo=False)    # TorchScript based
    # or with the table passed explicitly:
    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...,
                      custom_translation_table=onnx_translation_table())

Importing ``hgrn_core`` registers the translations with both exporters (``install()``):

* the TorchScript exporter (``dynamo=False``, what timm's ``onnx_export.py`` uses): symbolic
  functions registered with ``torch.onnx.register_custom_op_symbolic`` (opset >= 18) emit
  each op as a call of a model-local ONNX function (domain ``hgrn_onnx``, one function per
  direction / optional-input combination) whose body is the translation below, recorded
  into a ``FunctionProto`` (``g.onnxscript_op``); onnxruntime inlines it;
* the torch.export exporter (``dynamo=True``): the translations are added to onnxscript's
  torch_lib registry (``onnxscript.function_libs.torch_lib.registration.torch_op``), from
  which ``torch.onnx.export`` builds its registry on every call. So that importing hgrn
  does not import onnxscript (seconds), this happens when that registry module is first
  imported (a one-shot import hook), or at once if it already is.

``onnxscript`` (and ``onnx``) are imported only when a translation is asked for: the
package imports without them (``pip install hgrn[onnx]`` installs them).

How ``hgrn::hgru`` is translated (docs/spec.md §1, §6). The gates are elementwise ONNX ops, as in
``hgrn_core.gates`` (``s = sigmoid(mu)``, ``lam = gamma + (1 - gamma) s``,
``x = (1 - lam) SiLU(c)``, ``1 - lam = (1 - gamma) sigmoid(-mu)``), computed once for both
directions. The recurrence
``h_t = lam_t e^{i theta} h_{t-1} + x_t`` is cut into chunks of ``C = ceil(2 sqrt(N))``
steps (N is read from the input's shape at run time: one graph serves every image size):

1. a ``Scan`` of C steps runs every chunk at once from a zero state (chunks, directions
   and batch are the step's tensor axes), giving the chunk-local states;
2. each step's decay from its chunk's start, ``P = exp(cumsum(log lam)) e^{i theta j}``:
   a ``CumSum`` of log-decays from the chunk start, never a difference of cumulative sums,
   so nothing cancels, overflows or turns into nan (``lam = 0`` gives ``log = -inf`` and
   ``P = 0``, as it should);
3. a second ``Scan`` of N / C steps carries the state across chunks with each chunk's
   total decay (starting from ``h0`` when given);
4. ``h = h_local + P * carry``, one complex multiply-add over the whole tensor.

A layer thus runs ``C + N / C`` Scan steps (40 at 224 px, N = 256) instead of N, and the
arithmetic is the recurrence itself (products of decays of modulus <= 1 in fp32), so the
exported model matches eager torch to fp32 rounding. The tensors are laid out time first,
``(C, D, nc, B, d)``: one ``Gather`` with an index computed from N puts every token of
every direction at its walk position (the reverse direction walks the tokens from the end;
the padding of the last chunk re-reads the last token: it comes after every real step and
is dropped), so no Pad or flip is needed, and the Scans step over axis 0 (onnxruntime
transposes inputs scanned over another axis); another ``Gather`` brings the states back to
token order, summing the two directions for ``'both'``.

The math runs in fp32 (inputs in another dtype are cast; fp64 is not supported).

``hgrn::hgru2d`` (the 2-D HGRU over a patch grid of width ``grid_width``) is the 1-D
translation above run on the grid's rows, ``proj`` reshaped to (B * H, Wg, P), and on its
columns, transposed to (B, Wg, H, P) and reshaped to (B * Wg, H, P), with the same
direction; the column states are transposed back and the two summed (in fp32). H = N / Wg
and the rest are read from shapes at run time; the width is an int, or with a dynamic
image size a value (torch.export: a SymInt; the TorchScript exporter: the ONNX function's
last input), so one graph serves every image size. (``torch.jit.trace``, which the
TorchScript exporter runs, would record the op's int width as a constant: traced, the
``HGRU2d`` mixer calls ``hgrn::hgru`` on its rows and columns itself.)

``hgrn::norm_gate`` is ``LayerNormalization`` (its Mean / InvStdDev outputs are the op's
(B, N) statistics) times ``g * Sigmoid(g)`` of the gate.
"""
from __future__ import annotations

import importlib.abc
import itertools
import sys
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

ONNX_EXTRA_HINT = "pip install 'hgrn[onnx]' (onnx, onnxscript, onnxruntime)"
# what to try when the automatic registration is not in effect
EXPLICIT_HINT = ("pass custom_translation_table=hgrn_core.onnx_export.onnx_translation_table() "
                 "to torch.onnx.export(..., dynamo=True), or use hgrn_core.onnx_export."
                 "export_onnx() or the hgrn-export command")
# the domain of the ONNX functions the TorchScript exporter's symbolics emit
FUNCTION_DOMAIN = "hgrn_onnx"
MIN_OPSET = 18  # Split(num_outputs), LayerNormalization, ReduceSum(axes input)

# chunk length C = ceil(CHUNK_FACTOR * sqrt(N)): the first Scan runs C steps on tensors of
# N / C tokens, the second N / C steps on single states (pure per-step overhead), so the
# optimum lies above sqrt(N). Measured with onnxruntime 1.32 on 2 shared CPU cores,
# HGRN-DeiT-Tiny: factor 2 was 10-20 % faster than 1 (batch 1 at 224 and 448 px, batch 8 at
# 448 px), 3 and 4 no faster; a plain Scan over all N tokens 30-40 % slower at batch 1.
CHUNK_FACTOR = 2.0
_names = itertools.count()
_cache: Dict[str, Any] = {}
_functions: Dict[Any, Any] = {}   # the ONNX functions of the TorchScript exporter's symbolics


def require_onnx(*modules: str) -> None:
    """Raise ImportError naming the ``onnx`` extra if one of ``modules`` is missing."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed: "
                          f"{ONNX_EXTRA_HINT}")


def _impl() -> Dict[str, Any]:
    """Build the translation functions on first use (imports onnxscript and onnx_ir)."""
    if _cache:
        return _cache
    require_onnx("onnx", "onnxscript", "onnx_ir")
    import onnx_ir as ir
    from onnxscript import opset18 as op

    FLOAT = ir.DataType.FLOAT

    def const_i64(values: Sequence[int]):
        return op.Constant(value_ints=list(values))

    def zero():
        return op.Constant(value_float=0.0)

    def to_float(x):
        return x if getattr(x, "dtype", None) == FLOAT else op.Cast(x, to=FLOAT)

    def multi(first, n: int):
        """All ``n`` outputs of the node that produced ``first`` (the exporter's op recorder
        gives a variadic op such as Scan one output; the IR node can hold more)."""
        if isinstance(first, (list, tuple)):
            first = first[0]
        node = first.producer()
        if len(node.outputs) < n:
            node.resize_outputs(n)
        return list(node.outputs)[:n]

    # ------------------------------------------------------------------- Scan bodies
    def body(kind: str, complex_: bool, carry_out: bool, rank: int):
        """One recurrence step ``h = a h + u`` (real) or ``(a + ib)(hr + i hi) + (u + iv)``
        (complex) as a Scan body: state inputs, then scan inputs (all of ``rank``); outputs
        the new state, then per-step outputs (the new state, or with ``carry_out`` the
        incoming state)."""
        uid = f"hgru_{kind}_{next(_names)}"
        counter = itertools.count()
        shape = ir.Shape([None] * rank)

        def val(name: str):
            return ir.Value(name=f"{uid}_{name}", type=ir.TensorType(FLOAT), shape=shape)

        nodes = []

        def node(op_type: str, *inputs):
            out = ir.Value(name=f"{uid}_t{next(counter)}", type=ir.TensorType(FLOAT),
                           shape=shape)
            nodes.append(ir.Node("", op_type, inputs, outputs=[out], version=18))
            return out

        if complex_:
            hr, hi = val("hr"), val("hi")
            a, b, u, v = val("a"), val("b"), val("u"), val("v")
            inputs = [hr, hi, a, b, u, v]
            nr = node("Add", node("Sub", node("Mul", a, hr), node("Mul", b, hi)), u)
            ni = node("Add", node("Add", node("Mul", a, hi), node("Mul", b, hr)), v)
            new, old = [nr, ni], [hr, hi]
        else:
            h, a, u = val("h"), val("a"), val("u")
            inputs = [h, a, u]
            new, old = [node("Add", node("Mul", a, h), u)], [h]
        per_step = [node("Identity", t) for t in (old if carry_out else new)]
        return ir.Graph(inputs, new + per_step, nodes=nodes, name=uid)

    def scan(kind: str, states, xs, axis: int, carry_out: bool, complex_: bool, rank: int):
        n = len(states)
        first = op.Scan(*states, *xs, body=body(kind, complex_, carry_out, rank),
                        num_scan_inputs=len(xs), scan_input_axes=[axis] * len(xs),
                        scan_output_axes=[axis] * n)
        outs = multi(first, 2 * n)
        return outs[:n], outs[n:]

    # ---------------------------------------------------------------- hgrn::hgru
    def hgru(proj, lower_bound=None, theta_f=None, theta_r=None, h0=None,
             direction: str = "both", backend: str = "auto", *, final_state: bool = True):
        """ONNX translation of ``hgrn::hgru`` (the backend argument is irrelevant here);
        ``final_state=False`` returns ``h`` alone (the 2-D translation has no use for it).

        Layout: time first. A direction walks the tokens in its order p = 0..N-1 (the
        reverse one from the end); walk position p = k C + j sits at [j, dir, k] of the
        (C, D, nc, B, d) tensors the Scans read, so the first Scan steps over axis 0."""
        if direction not in ("forward", "reverse", "both"):
            raise ValueError(f"hgrn::hgru: unknown direction {direction!r}")
        complex_ = theta_f is not None or theta_r is not None
        dirs = ["forward", "reverse"] if direction == "both" else [direction]
        D = len(dirs)
        p = op.Transpose(to_float(proj), perm=[1, 0, 2])                     # (N, B, W + d)
        # the gates (hgrn_core.gates), once for both directions
        if complex_:
            cr, ci, mu = op.Split(p, axis=-1, num_outputs=3)
        else:
            c, mu = op.Split(p, axis=-1, num_outputs=2)
        # 1 - lam = (1 - gamma) sigmoid(-mu): never 1 minus a decay near 1 (hgrn_core.gates)
        s = op.Sigmoid(mu)
        keep = op.Sigmoid(op.Neg(mu))
        if lower_bound is None:
            lam = s
        else:
            one = op.Constant(value_float=1.0)
            omg = op.Sub(one, to_float(lower_bound))
            lam = op.Add(to_float(lower_bound), op.Mul(omg, s))
            keep = op.Mul(omg, keep)

        def scan_input(c_):
            return op.Mul(op.Mul(c_, op.Sigmoid(c_)), keep)

        # chunks of C = ceil(2 sqrt(N)) steps, nc = ceil(N / C)
        i64 = ir.DataType.INT64
        n_tok = op.Shape(p, start=0, end=1)                                   # [N]
        n_last = op.Sub(n_tok, const_i64([1]))
        chunk = op.Cast(op.Ceil(op.Mul(op.Sqrt(op.Cast(n_tok, to=FLOAT)),
                                       op.Constant(value_float=CHUNK_FACTOR))), to=i64)
        n_chunks = op.Div(op.Add(n_tok, op.Sub(chunk, const_i64([1]))), chunk)
        zero_i, one_i = op.Constant(value_int=0), op.Constant(value_int=1)
        j = op.Unsqueeze(op.Range(zero_i, op.Squeeze(chunk), one_i), const_i64([1]))   # (C, 1)
        k = op.Unsqueeze(op.Range(zero_i, op.Squeeze(n_chunks), one_i), const_i64([0]))  # (1, nc)
        walk = op.Add(op.Mul(k, chunk), j)                                    # (C, nc): p
        # token read at each walk position; positions p >= N (padding at the end of a
        # walk) read the last token: they come after every real step and are dropped
        walk = op.Min(walk, n_last)
        token = {"forward": walk, "reverse": op.Sub(n_last, walk)}
        index = op.Concat(*[op.Unsqueeze(token[dr], const_i64([1])) for dr in dirs], axis=1)

        def gather(x):                                                        # (C, D, nc, B, d)
            return op.Gather(x, index, axis=0)

        lam_g, loglam = gather(lam), gather(op.Log(lam))
        init = None
        if h0 is not None:  # one direction only (the op refuses h0 with 'both')
            h0f = op.Unsqueeze(to_float(h0), const_i64([0]))                # (1, B, W)
            init = list(op.Split(h0f, axis=-1, num_outputs=2)) if complex_ else [h0f]
        state_shape = op.Concat(const_i64([D]), n_chunks, op.Shape(p, start=1, end=2),
                                op.Shape(lam, start=2), axis=0)              # (D, nc, B, d)
        z = op.Expand(zero(), state_shape)
        carry0 = op.Expand(zero(), op.Concat(const_i64([D]), op.Shape(lam, start=1), axis=0))
        last = op.Squeeze(op.Sub(chunk, const_i64([1])))                      # scalar C - 1
        # 1. every chunk from a zero state, all chunks at once: C steps over axis 0
        # 2. decay from the chunk start through step j: exp(cumsum log lam) e^{i theta (j + 1)}
        # 3. the state entering each chunk: nc steps with each chunk's total decay
        # 4. h = h_local + P * carry
        mag = op.Exp(op.CumSum(loglam, const_i64([0])))
        if complex_:
            thetas = {"forward": theta_f, "reverse": theta_r}
            theta = op.Concat(*[op.Reshape(to_float(thetas[dr]), const_i64([1, 1, 1, -1]))
                                for dr in dirs], axis=0)                    # (D, 1, 1, d)
            a, b = op.Mul(lam_g, op.Cos(theta)), op.Mul(lam_g, op.Sin(theta))
            (fr, fi), (hr, hi) = scan("local", [z, z], [a, b, gather(scan_input(cr)),
                                                          gather(scan_input(ci))], 0, False,
                                      True, 4)
            steps = op.Cast(op.Range(one_i, op.Add(op.Squeeze(chunk), one_i), one_i), to=FLOAT)
            angle = op.Mul(op.Unsqueeze(theta, const_i64([0])),
                           op.Reshape(steps, const_i64([-1, 1, 1, 1, 1])))   # (C, D, 1, 1, d)
            pr, pi = op.Mul(mag, op.Cos(angle)), op.Mul(mag, op.Sin(angle))
            totals = [op.Gather(pr, last, axis=0), op.Gather(pi, last, axis=0)]
            _, (cr_, ci_) = scan("carry", init or [carry0, carry0], totals + [fr, fi], 1, True,
                                 True, 3)
            hr = op.Add(hr, op.Sub(op.Mul(pr, cr_), op.Mul(pi, ci_)))
            hi = op.Add(hi, op.Add(op.Mul(pr, ci_), op.Mul(pi, cr_)))
            h = op.Concat(hr, hi, axis=-1)                                    # (C, D, nc, B, W)
        else:
            (f,), (h,) = scan("local", [z], [lam_g, gather(scan_input(c))], 0, False, False, 4)
            _, (c_,) = scan("carry", init or [carry0], [op.Gather(mag, last, axis=0), f], 1,
                            True, False, 3)
            h = op.Add(h, op.Mul(mag, c_))
        # back to (B, N, W): token t is walk position t forward, N - 1 - t in reverse
        flat = op.Reshape(h, op.Concat(const_i64([-1]), op.Shape(h, start=3), axis=0))
        t = op.Range(zero_i, op.Squeeze(n_tok), one_i)                        # (N,)
        walk_pos = {"forward": t, "reverse": op.Sub(n_last, t)}

        def flat_index(pos, di):   # walk position -> row of flat (C * D * nc, B, W)
            jj, kk = op.Mod(pos, chunk), op.Div(pos, chunk)
            return op.Add(op.Mul(jj, op.Mul(const_i64([D]), n_chunks)),
                          op.Add(op.Mul(const_i64([di]), n_chunks), kk))

        rows = op.Concat(*[op.Unsqueeze(flat_index(walk_pos[dr], di), const_i64([0]))
                           for di, dr in enumerate(dirs)], axis=0)            # (D, N)
        out = op.Gather(flat, rows, axis=0)                                   # (D, N, B, W)
        out = (op.ReduceSum(out, const_i64([0]), keepdims=0) if D == 2
               else op.Squeeze(out, const_i64([0])))
        out = op.Transpose(out, perm=[1, 0, 2])                               # (B, N, W)
        if not final_state:
            return op.CastLike(out, proj)
        if direction == "both":  # no running state: the op returns zeros
            final = op.Expand(zero(), op.Concat(op.Shape(p, start=1, end=2),
                                                op.Shape(flat, start=2), axis=0))
        else:  # the state after the walk's last step (walk position N - 1)
            final = op.Gather(flat, op.Squeeze(flat_index(n_last, 0)), axis=0)
        return op.CastLike(out, proj), final

    # ----------------------------------------------------------- hgrn::norm_gate
    def norm_gate(h, gate, weight=None, bias=None, eps: float = 1e-5, backend: str = "auto"):
        """ONNX translation of ``hgrn::norm_gate``: LayerNorm(h) * SiLU(gate), with the
        (B, N) fp32 mean and reciprocal standard deviation."""
        hf, g = to_float(h), to_float(gate)
        w = (to_float(weight) if weight is not None
             else op.Expand(op.Constant(value_float=1.0), op.Shape(hf, start=-1)))
        args = [hf, w] + ([to_float(bias)] if bias is not None else [])
        y = op.LayerNormalization(*args, axis=-1, epsilon=float(eps), stash_type=1)
        y, mean, rstd = multi(y, 3)
        y = op.Mul(y, op.Mul(g, op.Sigmoid(g)))
        last = const_i64([-1])
        return op.CastLike(y, h), op.Squeeze(mean, last), op.Squeeze(rstd, last)

    # ---------------------------------------------------------------- hgrn::hgru2d
    def hgru2d(proj, lower_bound=None, theta_f=None, theta_r=None, grid_width=1,
               direction: str = "both", backend: str = "auto"):
        """ONNX translation of ``hgrn::hgru2d``: the 1-D translation on the grid's rows
        (B * H, Wg, P) and on its columns (B * Wg, H, P), with the same direction, summed.

        ``grid_width`` is an int (a static image size) or an INT64 scalar value (the
        exporters' dynamic width): H = N / Wg and everything else is read from shapes at
        run time, so one graph serves every image size."""
        if direction not in ("forward", "both"):
            raise ValueError(f"hgrn::hgru2d: direction must be 'forward' or 'both', got "
                             f"{direction!r}")
        i64 = ir.DataType.INT64
        if isinstance(grid_width, int):
            wg = const_i64([grid_width])
        else:
            if getattr(grid_width, "dtype", None) != i64:
                grid_width = op.Cast(grid_width, to=i64)
            wg = op.Reshape(grid_width, const_i64([1]))                       # [Wg]
        # in fp32 throughout: the two axes are summed before the one cast back
        p = to_float(proj)                                                    # (B, N, P)
        b_, p_ = op.Shape(p, start=0, end=1), op.Shape(p, start=2)
        grid = op.Reshape(p, op.Concat(b_, const_i64([-1]), wg, p_, axis=0))  # (B, H, Wg, P)
        h_ = op.Shape(grid, start=1, end=2)
        rows = op.Reshape(grid, op.Concat(const_i64([-1]), wg, p_, axis=0))   # (B * H, Wg, P)
        cols = op.Reshape(op.Transpose(grid, perm=[0, 2, 1, 3]),
                          op.Concat(const_i64([-1]), h_, p_, axis=0))         # (B * Wg, H, P)
        h_rows = hgru(rows, lower_bound, theta_f, theta_r, None, direction, final_state=False)
        h_cols = hgru(cols, lower_bound, theta_f, theta_r, None, direction, final_state=False)
        tokens = op.Concat(b_, const_i64([-1]), op.Shape(h_rows, start=2), axis=0)  # (B, N, W)
        h_cols = op.Transpose(op.Reshape(h_cols, op.Concat(b_, wg, h_, const_i64([-1]), axis=0)),
                              perm=[0, 2, 1, 3])                              # (B, H, Wg, W)
        return op.CastLike(op.Add(op.Reshape(h_rows, tokens), op.Reshape(h_cols, tokens)), proj)

    _cache.update(hgru=hgru, hgru2d=hgru2d, norm_gate=norm_gate)
    return _cache


def onnx_translation_table() -> Dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: the hgrn
    ops to their ONNX translations (imports onnxscript)."""
    import hgrn_core.hgru_op  # noqa: F401  (registers torch.ops.hgrn.*)
    import hgrn_core.hgru2d_op  # noqa: F401
    import hgrn_core.norm_gate_op  # noqa: F401
    impl = _impl()
    return {torch.ops.hgrn.hgru.default: impl["hgru"],
            torch.ops.hgrn.hgru2d.default: impl["hgru2d"],
            torch.ops.hgrn.norm_gate.default: impl["norm_gate"]}


def model_patch_size(model: torch.nn.Module) -> Tuple[int, int]:
    for owner in (model, getattr(model, "patch_embed", None)):
        p = getattr(owner, "patch_size", None)
        if p is not None:
            return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))
    return 1, 1


def image_dynamic_shapes(model: torch.nn.Module, dynamic_batch: bool = True,
                         dynamic_size: bool = True) -> Tuple[Dict[int, Any]]:
    """``dynamic_shapes`` for an image model's input (B, C, H, W): the batch, and H and W
    as multiples of the model's patch size (at least 2 patches per side when traced)."""
    from torch.export import Dim
    shapes: Dict[int, Any] = {}
    if dynamic_batch:
        shapes[0] = Dim("batch", min=1, max=65536)
    if dynamic_size:
        ph, pw = model_patch_size(model)
        shapes[2] = ph * Dim("patches_h", min=2, max=4096) if ph > 1 else Dim("height", min=2)
        shapes[3] = pw * Dim("patches_w", min=2, max=4096) if pw > 1 else Dim("width", min=2)
    return (shapes,)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, f: Optional[str] = None, *,
                opset: Optional[int] = None, dynamic_batch: bool = True,
                dynamic_size: bool = True, optimize: bool = True, verbose: bool = False):
    """Export an image model (hgrn ops included) with ``torch.onnx.export(dynamo=True)``,
    with a dynamic batch and image size; save it to ``f`` if given. Returns the
    ``torch.onnx.ONNXProgram``. Trace with a batch of >= 2 and >= 2 patches per side
    (torch.export specialises dimensions of size 1)."""
    require_onnx("onnx", "onnxscript")
    if dynamic_batch and example.shape[0] < 2:
        raise ValueError("export with a batch of at least 2 (a dimension of size 1 is "
                         "specialised by torch.export); the exported batch stays dynamic")
    kwargs: Dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    program = torch.onnx.export(
        model, (example,), dynamo=True,
        dynamic_shapes=image_dynamic_shapes(model, dynamic_batch, dynamic_size),
        custom_translation_table=onnx_translation_table(), optimize=optimize,
        verbose=verbose, report=False, **kwargs)
    if f is not None:
        program.save(f)
    return program


# --------------------------------------------- the TorchScript exporter (dynamo=False)
class _Recorder:
    """An onnxscript evaluator that records the translation's op calls as ``onnx_ir``
    nodes (instead of running them), to make a function body of them."""

    def __init__(self) -> None:
        self.nodes: list = []

    def _record(self, domain: str, op_type: str, args, kwargs):
        import onnx_ir as ir
        inputs = list(args)
        for x in inputs:
            if x is not None and not isinstance(x, ir.Value):
                raise TypeError(f"{op_type}: input {x!r} is not a value (the translation "
                                f"passes constants as Constant nodes)")
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = ir.convenience.convert_attributes(
            {k: v for k, v in kwargs.items() if v is not None})
        n_out = int(kwargs["num_outputs"]) if op_type == "Split" and "num_outputs" in kwargs else 1
        node = ir.Node(domain, op_type, inputs, attributes=attrs, num_outputs=n_out,
                       name=f"{op_type}_{len(self.nodes)}")
        self.nodes.append(node)
        outs = list(node.outputs)
        for i, out in enumerate(outs):
            out.name = f"{node.name}_out{i}"
        return outs[0] if len(outs) == 1 else tuple(outs)

    def eval_op(self, op, args, kwargs):  # onnxscript >= 0.6
        return self._record(op.opset.domain, op.name, args, kwargs)

    def eval(self, schema, args, kwargs):  # onnxscript < 0.6
        return self._record(schema.domain, schema.name, args, kwargs)

    def eval_function(self, function, args, kwargs):
        raise NotImplementedError("the hgrn translations call no onnxscript functions")


class _FunctionOp:
    """What ``GraphContext.onnxscript_op`` needs of an onnxscript function: ``name``,
    ``opset`` (domain and version) and ``to_function_proto()``."""

    def __init__(self, name: str, proto) -> None:
        from onnxscript import values
        self.name, self._proto = name, proto
        self.opset = values.Opset(FUNCTION_DOMAIN, 1)  # the exporter looks custom domains up at 1

    def to_function_proto(self):
        return self._proto


def _function(op: str, present: Tuple[str, ...], attrs: Dict[str, Any], opset: int) -> _FunctionOp:
    """The translation of ``op`` as an ONNX function taking the ``present`` inputs (the
    absent optional ones are None), specialised to ``attrs``; cached."""
    key = (op, present, tuple(sorted(attrs.items())), opset)
    if key in _functions:
        return _functions[key]
    impl = _impl()
    import onnx_ir as ir
    from onnxscript import evaluator
    signature = {"hgru": ("proj", "lower_bound", "theta_f", "theta_r", "h0"),
                 "hgru2d": ("proj", "lower_bound", "theta_f", "theta_r", "grid_width"),
                 "norm_gate": ("h", "gate", "weight", "bias")}[op]
    inputs = {n: ir.Value(name=n) for n in present}
    recorder = _Recorder()
    with evaluator.default_as(recorder):
        outs = impl[op](*(inputs.get(n) for n in signature), **attrs)
    if not isinstance(outs, (tuple, list)):  # hgru2d: one output
        outs = (outs,)
    tags = [f"{k}_{v}".replace(".", "p").replace("-", "m") for k, v in sorted(attrs.items())
            if k in ("direction", "eps")]
    name = "_".join([op, *tags, *present])
    for i, out in enumerate(outs):
        out.name = f"output_{i}"
    graph = ir.Graph(list(inputs.values()), list(outs), nodes=recorder.nodes,
                     opset_imports={"": opset}, name=name)
    function = ir.Function(FUNCTION_DOMAIN, name, graph=graph, attributes=[])
    fn = _FunctionOp(name, ir.serde.serialize_function(function))
    _functions[key] = fn
    return fn


def _symbolic_inputs(names: Sequence[str], values: Sequence[Any]):
    """The names and values of the inputs given (not None in the TorchScript graph)."""
    from torch.onnx import symbolic_helper as sh
    present = tuple(n for n, v in zip(names, values) if v is not None and not sh._is_none(v))
    return present, [v for n, v in zip(names, values) if n in present]


def _need_translation(g, op: str) -> None:
    try:
        require_onnx("onnx", "onnxscript", "onnx_ir")
    except ImportError as err:
        raise ImportError(f"exporting hgrn::{op} to ONNX: {err}") from None
    if g.opset < MIN_OPSET:
        raise RuntimeError(f"exporting hgrn::{op} to ONNX needs opset >= {MIN_OPSET}, "
                           f"got {g.opset}: pass opset_version={MIN_OPSET} or higher")


def _typed(value, like, rank: int, last: Optional[int], dtype: Optional[torch.dtype] = None):
    """Type an output of a function call for the exporter's shape inference (which cannot
    see into the function): ``like``'s dtype (or ``dtype``), ``rank`` dimensions, all
    unknown (the batch and token counts may be dynamic) but the last, ``last``."""
    t = like.type()
    if isinstance(t, torch._C.TensorType):
        if dtype is not None:
            t = t.with_dtype(dtype)
        value.setType(t.with_sizes([None] * (rank - 1) + [last]))
    return value


def _last_dim(v) -> Optional[int]:
    t = v.type()
    sizes = t.varyingSizes() if isinstance(t, torch._C.TensorType) else None
    return sizes[-1] if sizes else None


def _hgru_symbolic(g, proj, lower_bound, theta_f, theta_r, h0, direction, backend):
    """hgrn::hgru for the TorchScript exporter: a call of the translation as an ONNX
    function (the backend is irrelevant)."""
    from torch.onnx import symbolic_helper as sh
    _need_translation(g, "hgru")
    direction = sh._maybe_get_const(direction, "s")
    present, args = _symbolic_inputs(("proj", "lower_bound", "theta_f", "theta_r", "h0"),
                                     (proj, lower_bound, theta_f, theta_r, h0))
    fn = _function("hgru", present, {"direction": direction}, g.opset)
    h, final = g.onnxscript_op(fn, *args, outputs=2)
    P, W = _last_dim(proj), None
    if P is not None:  # proj = [c (W) | mu (d)], W = 2d (complex) or d
        W = P - P // (3 if ("theta_f" in present or "theta_r" in present) else 2)
    return _typed(h, proj, 3, W), _typed(final, proj, 2, W, torch.float32)


def _hgru2d_symbolic(g, proj, lower_bound, theta_f, theta_r, grid_width, direction, backend):
    """hgrn::hgru2d for the TorchScript exporter: a call of the translation as an ONNX
    function whose last input is the grid's width (a constant, or the traced image's width
    when the export has a dynamic size), so one function serves every width."""
    from torch.onnx import symbolic_helper as sh
    _need_translation(g, "hgru2d")
    direction = sh._maybe_get_const(direction, "s")
    width = sh._maybe_get_const(grid_width, "i")
    if not isinstance(width, torch._C.Value):
        width = g.op("Constant", value_t=torch.tensor(int(width), dtype=torch.int64))
    present, args = _symbolic_inputs(("proj", "lower_bound", "theta_f", "theta_r"),
                                     (proj, lower_bound, theta_f, theta_r))
    fn = _function("hgru2d", present + ("grid_width",), {"direction": direction}, g.opset)
    h = g.onnxscript_op(fn, *args, width, outputs=1)
    P, W = _last_dim(proj), None
    if P is not None:  # as hgrn::hgru
        W = P - P // (3 if ("theta_f" in present or "theta_r" in present) else 2)
    return _typed(h, proj, 3, W)


def _norm_gate_symbolic(g, h, gate, weight, bias, eps, backend):
    """hgrn::norm_gate for the TorchScript exporter: a call of the translation as an ONNX
    function."""
    from torch.onnx import symbolic_helper as sh
    _need_translation(g, "norm_gate")
    eps = float(sh._maybe_get_const(eps, "f"))
    present, args = _symbolic_inputs(("h", "gate", "weight", "bias"), (h, gate, weight, bias))
    fn = _function("norm_gate", present, {"eps": eps}, g.opset)
    y, mean, rstd = g.onnxscript_op(fn, *args, outputs=3)
    return (_typed(y, h, 3, _last_dim(h)), _typed(mean, h, 2, None, torch.float32),
            _typed(rstd, h, 2, None, torch.float32))


def register_torchscript_symbolics() -> bool:
    """Register the symbolic functions of ``hgrn::hgru``, ``hgrn::hgru2d`` and
    ``hgrn::norm_gate`` with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``), at opset 18 and up.
    Cheap (imports neither onnx nor onnxscript). Returns False where that exporter is gone."""
    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if register is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter is deprecated
        register("hgrn::hgru", _hgru_symbolic, MIN_OPSET)
        register("hgrn::hgru2d", _hgru2d_symbolic, MIN_OPSET)
        register("hgrn::norm_gate", _norm_gate_symbolic, MIN_OPSET)
    return True


# ------------------------------------------------ the torch.export exporter (dynamo=True)
TORCHLIB_REGISTRATION = "onnxscript.function_libs.torch_lib.registration"


def _torchlib_hgru(proj, lower_bound=None, theta_f=None, theta_r=None, h0=None,
                   direction: str = "both", backend: str = "auto"):
    """hgrn::hgru, as registered in onnxscript's torch_lib (see ``_impl``)."""
    return _impl()["hgru"](proj, lower_bound, theta_f, theta_r, h0, direction, backend)


def _torchlib_hgru2d(proj, lower_bound=None, theta_f=None, theta_r=None, grid_width=1,
                     direction: str = "both", backend: str = "auto"):
    """hgrn::hgru2d, as registered in onnxscript's torch_lib (see ``_impl``). ``grid_width``
    is left unannotated: an input, so a dynamic width (a SymInt: an INT64 scalar value)
    and a static one (an int) both reach the translation."""
    return _impl()["hgru2d"](proj, lower_bound, theta_f, theta_r, grid_width, direction,
                             backend)


def _torchlib_norm_gate(h, gate, weight=None, bias=None, eps: float = 1e-5,
                        backend: str = "auto"):
    """hgrn::norm_gate, as registered in onnxscript's torch_lib (see ``_impl``)."""
    return _impl()["norm_gate"](h, gate, weight, bias, eps, backend)


def register_dynamo_translations(registration=None) -> None:
    """Add the translations to onnxscript's torch_lib registry, which
    ``torch.onnx.export(..., dynamo=True)`` reads on every call (imports onnxscript)."""
    if registration is None:
        import importlib
        registration = importlib.import_module(TORCHLIB_REGISTRATION)
    registry = registration.default_registry
    for name, fn in (("hgrn::hgru", _torchlib_hgru), ("hgrn::hgru2d", _torchlib_hgru2d),
                     ("hgrn::norm_gate", _torchlib_norm_gate)):
        if name not in registry:
            registration.torch_op(name, trace_only=True)(fn)


class _WhenImported(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A one-shot import hook: runs ``callback(module)`` once ``name`` has been imported
    (by whoever imports it), then steps aside."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name, self.callback, self._loader = name, callback, None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self._loader is not None:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _WhenImported) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        loader = self._loader
        loader.exec_module(module)
        module.__loader__ = loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = loader
        self.remove()
        self.callback(module)

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


_installed = False


def install() -> None:
    """Register the translations with both exporters (idempotent; called on importing
    ``hgrn_core``): the TorchScript symbolics now, the torch_lib entries now if onnxscript's
    torch_lib registry is imported already, else when it is."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        register_torchscript_symbolics()
    except Exception as err:  # an exporter API changed: do not break importing hgrn
        warnings.warn(f"hgrn: could not register the ONNX symbolics of the hgrn ops with the "
                      f"TorchScript exporter ({type(err).__name__}: {err}); {EXPLICIT_HINT}",
                      RuntimeWarning)
    module = sys.modules.get(TORCHLIB_REGISTRATION)
    if module is not None:
        _register_quietly(module)
    else:
        sys.meta_path.insert(0, _WhenImported(TORCHLIB_REGISTRATION, _register_quietly))


def _register_quietly(module) -> None:
    """``register_dynamo_translations``, warning instead of raising (it runs inside an
    import of onnxscript, which must not fail because of hgrn)."""
    try:
        register_dynamo_translations(module)
    except Exception as err:
        warnings.warn(f"hgrn: could not register the ONNX translations with "
                      f"torch.onnx.export(dynamo=True) ({type(err).__name__}: {err}); "
                      f"{EXPLICIT_HINT}", RuntimeWarning)


__all__ = ["export_onnx", "onnx_translation_table", "image_dynamic_shapes", "model_patch_size",
           "require_onnx", "install", "register_torchscript_symbolics",
           "register_dynamo_translations", "ONNX_EXTRA_HINT", "EXPLICIT_HINT"]
