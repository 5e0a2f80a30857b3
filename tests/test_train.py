"""hgrn-train on CPU: learning on the embedded digits data, exact resume, 2-process gloo torchrun,
--validate-only, and clear errors for bad input (missing data, corrupt / mismatched checkpoints)."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tools import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a tiny HGRN-DeiT on 16 px digits: 16 tokens, width 32, 2 blocks (seconds per epoch on 2 cores)
TINY = ['--model', 'hgrn_deit_tiny', '--model-kwargs', 'img_size=16', 'patch_size=4', 'embed_dim=32', 'depth=2',
        'glu_hidden_dim=64', 'mixer_backend=torch', '--device', 'cpu', '--log-interval', '0']


def _args(tmp_path, *extra, epochs=2):
    return ['--output', str(tmp_path), '--epochs', str(epochs), *TINY, *extra]


def _run(argv):
    return T.run(T.parse_args(argv))


def _summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _ckpt(path):
    with torch.serialization.safe_globals([__import__('argparse').Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """2 epochs on digits (shared by several tests)."""
    out = tmp_path_factory.mktemp('trained')
    res = _run(_args(out, '--experiment', 'run', '--lr', '3e-3', '--warmup-epochs', '0', '--batch-size', '32',
                     '--model-ema', '--model-ema-decay', '0.9'))
    return res


def test_digits_training_learns(trained):
    rows = _summary(trained['summary'])
    assert [int(r['epoch']) for r in rows] == [0, 1]
    assert float(rows[1]['train_loss']) < float(rows[0]['train_loss'])
    assert trained['eval']['top1'] > 60.0  # chance is 10%
    assert os.path.isfile(trained['checkpoint'])
    ck = _ckpt(trained['checkpoint'])
    assert ck['epoch'] == 1 and 'optimizer' in ck and 'state_dict_ema' in ck


def test_validate_only_reproduces_eval(trained, capsys):
    res = _run(['--validate-only', '--initial-checkpoint', trained['checkpoint'], *TINY])
    assert res['eval']['top1'] == pytest.approx(trained['eval']['top1'], abs=1e-6)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('{')][-1]
    assert json.loads(line)['top1'] == pytest.approx(trained['eval']['top1'], abs=1e-3)
    res_ema = _run(['--validate-only', '--use-ema', '--initial-checkpoint', trained['checkpoint'], *TINY])
    assert res_ema['eval']['top1'] == pytest.approx(trained['eval']['ema_top1'], abs=1e-6)


class _Interrupt(Exception):
    pass


def test_resume_is_exact(tmp_path, monkeypatch):
    extra = ['--train-num-samples', '192', '--val-num-samples', '64', '--batch-size', '48', '--lr', '2e-3', '--warmup-epochs', '1', '--drop-path', '0.1',
             '--mixup', '0.5', '--model-ema', '--clip-grad', '1.0']
    full = _run(_args(tmp_path, '--experiment', 'full', *extra))

    # the same run, killed right after the epoch-0 checkpoint is written ...
    orig = T.AtomicCheckpointSaver.save_checkpoint

    def save_then_die(self, epoch, metric=None):
        out = orig(self, epoch, metric)
        raise _Interrupt()
    monkeypatch.setattr(T.AtomicCheckpointSaver, 'save_checkpoint', save_then_die)
    with pytest.raises(_Interrupt):
        _run(_args(tmp_path, '--experiment', 'cut', *extra))
    monkeypatch.setattr(T.AtomicCheckpointSaver, 'save_checkpoint', orig)
    last = os.path.join(tmp_path, 'train', 'cut', 'last.pth.tar')
    assert _ckpt(last)['epoch'] == 0

    # ... and resumed in a fresh process state: ends with bit-identical weights, EMA and optimizer
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG it starts with
    resumed = _run(_args(tmp_path, '--resume', last, *extra))
    a, b = _ckpt(full['checkpoint']), _ckpt(resumed['checkpoint'])
    assert resumed['output_dir'] == os.path.dirname(last)
    for key in ('state_dict', 'state_dict_ema'):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k
    assert full['weights_sha256'] == resumed['weights_sha256']
    rows = _summary(resumed['summary'])
    assert [int(r['epoch']) for r in rows] == [0, 1]  # the resumed run continues the same summary


def test_torchrun_two_processes_gloo(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
           '-m', 'tools.train', *_args(tmp_path, '--experiment', 'ddp', epochs=1),
           '--train-num-samples', '256', '--val-num-samples', '100', '--batch-size', '32']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert 'backend gloo' in p.stdout + p.stderr
    info = json.load(open(os.path.join(tmp_path, 'train', 'ddp', 'weights_sha256.json')))
    assert len(info['ranks']) == 2 and info['in_sync'] and info['ranks'][0] == info['ranks'][1]
    rows = _summary(os.path.join(tmp_path, 'train', 'ddp', 'summary.csv'))
    assert float(rows[0]['eval_top1']) > 10.0


def _expect_error(argv, capsys, *needles):
    with pytest.raises(SystemExit) as e:
        T.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'hgrn-train: error:' in err
    for n in needles:
        assert n in err, err
    return err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys, trained):
    bad = tmp_path / 'last.pth.tar'
    bad.write_bytes(b'this is not a checkpoint')
    _expect_error(_args(tmp_path / 'o', '--resume', str(bad)), capsys, str(bad), 'corrupt')
    # a real checkpoint cut in half (what a crash mid-write would leave without the atomic save)
    data = open(trained['checkpoint'], 'rb').read()
    bad.write_bytes(data[:len(data) // 2])
    _expect_error(_args(tmp_path / 'o', '--resume', str(bad)), capsys, str(bad), 'corrupt')
    _expect_error(_args(tmp_path / 'o', '--resume', str(tmp_path / 'nope.pth.tar')), capsys, 'not found')
    assert not (tmp_path / 'o').exists()  # failed before any output was written


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, capsys, trained):
    argv = _args(tmp_path / 'o', '--resume', trained['checkpoint'])
    argv[argv.index('embed_dim=32')] = 'embed_dim=48'
    _expect_error(argv, capsys, trained['checkpoint'], 'does not match the model', 'shape mismatch')
    _expect_error(_args(tmp_path / 'o', '--resume', trained['checkpoint'], '--num-classes', '7'), capsys,
                  'does not match the model', 'head')
    assert not (tmp_path / 'o').exists()


def test_resume_with_another_optimizer_is_a_clear_error(tmp_path, capsys, trained):
    # the digits run trains with AdamW; SGD would load its state and fail at the first step
    argv = _args(tmp_path / 'o', '--resume', trained['checkpoint'], '--opt', 'sgd')
    _expect_error(argv, capsys, trained['checkpoint'], 'optimizer "adamw"', '--no-resume-opt')
    assert not (tmp_path / 'o').exists()
    # a fresh optimizer from the checkpoint's weights is fine
    res = _run(_args(tmp_path / 'p', '--resume', trained['checkpoint'], '--opt', 'sgd', '--no-resume-opt',
                     epochs=3))
    assert os.path.exists(res['checkpoint'])


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    _expect_error(['--dataset', '', '--data-dir', str(tmp_path / 'imagenet'), *TINY], capsys,
                  'data path does not exist', 'imagenet')
    cfg = os.path.join(ROOT, 'configs', 'hgrn_deit_tiny_in1k.yaml')
    _expect_error(['--config', cfg, '--device', 'cpu'], capsys, 'no data path')


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of writing epoch 1's checkpoint leaves epoch 0's `last` intact."""
    real_save = torch.save
    calls = []

    def crashing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            with open(f, 'wb') as fh:
                fh.write(b'partial')
            raise OSError('disk full')
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', crashing_save)
    with pytest.raises(OSError):
        _run(_args(tmp_path, '--experiment', 'crash', '--train-num-samples', '128',
                  '--val-num-samples', '32'))
    last = os.path.join(tmp_path, 'train', 'crash', 'last.pth.tar')
    assert _ckpt(last)['epoch'] == 0
