"""Run one of timm's scripts with the hgrn models registered in timm.

    hgrn-timm validate.py /imagenet --model hgrn_deit_small --checkpoint model_best.pth.tar
    hgrn-timm /path/to/pytorch-image-models/benchmark.py --model hgrn_deit_tiny --bench inference

timm's scripts (``train.py``, ``validate.py``, ``benchmark.py``, ``inference.py``, ...) live in a
checkout of pytorch-image-models, not in the timm wheel, and build their model by name with
``timm.create_model``. Only ``train.py`` can import a plugin module itself (``--device-modules``);
this launcher does it for any of them:

1. imports ``hgrn_vision`` (registers the ``hgrn_deit_*`` models) and ``hgrn_tools.pillow_compat``
   (the Pillow >= 13 guard for timm's RandAugment posterize; it patches nothing with Pillow < 13);
2. runs SCRIPT as ``__main__``, as ``python SCRIPT ARGS...`` would: ``sys.argv = [SCRIPT, *ARGS]``
   and the script's own folder first on ``sys.path`` (its sibling modules import);
3. exits with the script's exit status (``sys.exit(n)`` in the script gives ``n``; an exception
   propagates, with its traceback and exit status 1).
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Optional, Sequence, Union

__all__ = ['main', 'run_script']


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='hgrn-timm',
        description="Run a timm script (train.py, validate.py, benchmark.py, inference.py, ... from a "
                    "pytorch-image-models checkout) with the hgrn models registered in timm.",
        epilog="example: hgrn-timm validate.py /imagenet --model hgrn_deit_small --checkpoint model_best.pth.tar")
    p.add_argument('script', help="path of the timm script to run")
    p.add_argument('args', nargs=argparse.REMAINDER, help="the script's own arguments, passed on unchanged")
    return p


def run_script(script: str, args: Sequence[str] = ()) -> Union[int, str, None]:
    """Run ``script`` as ``__main__`` with ``args``; returns its exit status (what ``sys.exit`` takes).

    ``sys.argv`` and ``sys.path`` are restored afterwards. Raises FileNotFoundError when ``script``
    is not a file.
    """
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no such script: {os.path.abspath(script)}")
    import hgrn_vision  # noqa: F401  registers the hgrn models in timm
    import hgrn_tools.pillow_compat  # noqa: F401  importing it installs the guard (where needed)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    return 0


def main(argv: Optional[Sequence[str]] = None) -> Union[int, str, None]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    if not argv:
        parser.print_help(sys.stderr)  # nothing to run: a usage error
        return 2
    script, args = argv[0], argv[1:]  # everything after SCRIPT is the script's, unchanged (its --help too)
    if script in ('-h', '--help'):
        parser.print_help()
        return 0
    if script.startswith('-'):
        parser.error(f"unknown option {script}: the launcher's only option is --help; "
                     f"the script's options go after SCRIPT")  # exits 2
    if not os.path.isfile(script):
        print(f"hgrn-timm: no such script: {os.path.abspath(script)} (timm's scripts are in a "
              f"pytorch-image-models checkout, not in the timm wheel)", file=sys.stderr)
        return 2
    return run_script(script, args)


if __name__ == '__main__':
    sys.exit(main())
