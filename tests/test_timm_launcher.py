"""hgrn-timm (tools/timm_launcher.py): runs a timm-style script with the hgrn models registered,
passing its arguments through and giving back its exit status."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from hgrn_tools import timm_launcher

# A stand-in for timm's validate.py: argparse, a sibling module, timm.create_model by name (which
# fails unless hgrn_vision registered the model), an output line the test reads, an exit status.
SCRIPT = textwrap.dedent('''
    import argparse
    import sys

    import timm
    import torch

    import sibling_helper  # next to this script: importable only with the script's folder on sys.path

    parser = argparse.ArgumentParser()
    parser.add_argument('data')
    parser.add_argument('--model', required=True)
    parser.add_argument('--num-classes', type=int, default=3)
    parser.add_argument('--exit-code', type=int, default=0)
    args = parser.parse_args()

    model = timm.create_model(args.model, num_classes=args.num_classes, img_size=28, embed_dim=16, depth=1)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28))
    print(f"RESULT data={args.data} model={type(model).__name__} out={tuple(out.shape)} "
          f"helper={sibling_helper.TAG} argv0={sys.argv[0]}")
    sys.exit(args.exit_code)
''')


@pytest.fixture
def script(tmp_path):
    (tmp_path / 'sibling_helper.py').write_text("TAG = 'sibling-ok'\n")
    path = tmp_path / 'fake_validate.py'
    path.write_text(SCRIPT)
    return str(path)


def _result_line(text):
    lines = [l for l in text.splitlines() if l.startswith('RESULT ')]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize('exit_code', [0, 3])
def test_in_process_passes_arguments_and_exit_status(script, exit_code, capsys):
    argv_before, path_before = list(sys.argv), list(sys.path)
    rc = timm_launcher.main([script, '/data/imagenet', '--model', 'hgrn_deit_tiny', '--num-classes', '5',
                             '--exit-code', str(exit_code)])
    assert rc == exit_code
    line = _result_line(capsys.readouterr().out)
    assert 'data=/data/imagenet model=HgrnDeiT out=(2, 5) helper=sibling-ok' in line
    assert line.endswith(f'argv0={script}')
    assert sys.argv == argv_before and sys.path == path_before  # restored after the run


def test_script_errors_propagate(script):
    # argparse in the script rejects a missing argument: its own exit status 2 comes back
    assert timm_launcher.main([script, '--model', 'hgrn_deit_tiny']) == 2
    # an unknown model name is timm's RuntimeError, not swallowed by the launcher
    with pytest.raises(RuntimeError, match='no_such_model'):
        timm_launcher.main([script, 'd', '--model', 'no_such_model'])


def test_missing_script_and_no_arguments(tmp_path, capsys):
    missing = tmp_path / 'validate.py'
    assert timm_launcher.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert f'no such script: {missing}' in err and 'pytorch-image-models' in err

    assert timm_launcher.main([]) == 2  # nothing to run: the launcher's help
    assert 'usage: hgrn-timm' in capsys.readouterr().err

    assert timm_launcher.main(['--help']) == 0
    assert 'usage: hgrn-timm' in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        timm_launcher.main(['--model', 'x'])
    assert e.value.code == 2 and 'unknown option --model' in capsys.readouterr().err


def _launcher_command():
    exe = shutil.which('hgrn-timm', path=os.path.dirname(sys.executable)) or shutil.which('hgrn-timm')
    return [exe] if exe else [sys.executable, '-m', 'hgrn_tools.timm_launcher']


@pytest.mark.parametrize('exit_code', [0, 7])
def test_console_script(script, exit_code, tmp_path):
    cmd = _launcher_command() + [script, 'DATA', '--model', 'hgrn_deit_tiny', '--exit-code', str(exit_code)]
    # run from another folder: the script's folder, not the working directory, makes sibling_helper importable
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == exit_code, proc.stderr
    assert 'data=DATA model=HgrnDeiT out=(2, 3) helper=sibling-ok' in _result_line(proc.stdout)


def test_console_script_missing_script(tmp_path):
    proc = subprocess.run(_launcher_command() + ['no_such_dir/validate.py', '--model', 'hgrn_deit_tiny'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"no such script: {tmp_path / 'no_such_dir' / 'validate.py'}" in proc.stderr
