"""The ImageNet recipes (configs/*_in1k.yaml) really train: their augmentation at its extreme magnitudes,
end-to-end runs of each recipe through hgrn-train on a small ImageFolder, and the guard that keeps timm's
0-bit posterize (RandAugment magnitude 10) a black image under Pillow >= 13 (tools/pillow_compat.py)."""
import csv
import glob
import importlib
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from timm.data import auto_augment as AA
from timm.data import resolve_data_config
from timm.data.auto_augment import RandAugment

from tools import pillow_compat
from tools import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, 'configs', '*_in1k.yaml')))
NUM_CLASSES = 4
# the recipes, shrunk to a 32 px model of 2 blocks (8x8 = 64 tokens); nothing else is changed
SHRINK = ['--model-kwargs', 'img_size=32', 'patch_size=4', 'embed_dim=64', 'depth=2', 'glu_hidden_dim=128',
          'mixer_backend=torch', '--num-classes', str(NUM_CLASSES), '--img-size', '32', '--input-size', '3', '32',
          '32', '--device', 'cpu', '--workers', '0', '--log-interval', '0']


def _recipe(path):
    with open(path) as f:
        return yaml.safe_load(f)


def _at_max_magnitude(aa):
    """The recipe's RandAugment string with the magnitude at the top of timm's scale (10): every draw of
    `mstd` noise above it is clipped to 10, so PosterizeIncreasing keeps 0 bits in half of its uses."""
    assert re.search(r'-m\d+', aa), aa
    return re.sub(r'-m\d+', '-m10', aa)


def _installed_compat_module():
    """The pillow_compat module whose posterize timm now calls (it may be imported under two names)."""
    return sys.modules[AA.posterize.__module__]


@pytest.fixture
def guard_off():
    """timm's own posterize for the duration of a test; the guard is put back afterwards."""
    was = pillow_compat.uninstall()
    yield
    if was:
        pillow_compat.install()


def _pillow12_posterize(arr, bits):
    """Pillow 12.x ImageOps.posterize: a lookup table i & ~(2 ** (8 - bits) - 1) (all zeros for bits <= 0)."""
    mask = ~(2 ** (8 - bits) - 1)
    lut = np.array([i & mask for i in range(256)], dtype=np.uint8)
    return lut[arr]


# --------------------------------------------------------------------------------------------
# The guard itself
# --------------------------------------------------------------------------------------------

def test_pillow_rejects_zero_bits_without_the_guard(guard_off):
    """The failure the guard exists for (skipped on a Pillow that still accepts 0 bits)."""
    img = Image.new('RGB', (4, 4), (200, 100, 50))
    if not pillow_compat.needs_guard():
        pytest.skip('this Pillow accepts posterize with 0 bits; the guard is not needed')
    with pytest.raises(ValueError, match='bits'):
        AA.posterize(img, 0)
    assert pillow_compat.install() and pillow_compat.is_installed()


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_guarded_posterize_is_pillow12_posterize(mode):
    pillow_compat.install()
    rng = np.random.RandomState(0)
    arr = rng.randint(0, 256, size=(7, 5, 3) if mode == 'RGB' else (7, 5), dtype=np.uint8)
    img = Image.fromarray(arr, mode)
    for op_name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
        fn = AA.NAME_TO_OP[op_name]
        for bits in range(-2, 9):
            out = fn(img, bits)
            assert out.mode == mode and out.size == img.size
            expect = arr if bits >= 8 else _pillow12_posterize(arr, bits)
            assert np.array_equal(np.asarray(out), expect), (op_name, bits)
        assert not np.asarray(fn(img, 0)).any()  # 0 bits: the black image


def test_guard_is_idempotent_and_narrow():
    if not pillow_compat.install():
        pytest.skip('guard not needed with this Pillow')
    before = dict(AA.NAME_TO_OP)
    guarded = AA.posterize
    assert pillow_compat.install() and AA.posterize is guarded and AA.NAME_TO_OP == before
    # the same module under its installed name (what the recipes' device_modules import) is a no-op too
    try:
        other = importlib.import_module(pillow_compat.DEVICE_MODULE)
    except ImportError:  # a checkout without the package installed
        other = None
    if other is not None:
        assert other.install() and AA.posterize is guarded and AA.NAME_TO_OP == before
    # only the three posterize ops are guarded; every other op is timm's own function
    for name, fn in AA.NAME_TO_OP.items():
        if name.startswith('Posterize'):
            assert fn is guarded
        else:
            assert fn.__module__ == 'timm.data.auto_augment', name
    # bits >= 1 and other modes are timm's / Pillow's business: RGBA still raises as before
    with pytest.raises(Exception):
        AA.posterize(Image.new('RGBA', (2, 2)), 0)


def test_guard_does_nothing_where_zero_bits_work(guard_off, monkeypatch):
    """With a Pillow (or a timm) that handles 0 bits, nothing is patched."""
    def accepting(img, bits_to_keep, **_):
        return img
    monkeypatch.setattr(AA, 'posterize', accepting)
    for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
        monkeypatch.setitem(AA.NAME_TO_OP, name, accepting)
    assert pillow_compat.install() is False
    assert AA.posterize is accepting and AA.NAME_TO_OP['PosterizeIncreasing'] is accepting


@pytest.mark.parametrize('path', RECIPES, ids=os.path.basename)
def test_recipe_device_modules_install_the_guard(path, guard_off):
    """timm's train.py imports device_modules before it builds anything: importing them installs the guard."""
    mods = _recipe(path)['device_modules']
    assert mods[0] == 'hgrn_vision' and pillow_compat.DEVICE_MODULE in mods
    assert pillow_compat.DEVICE_MODULE == 'hgrn_tools.pillow_compat'
    assert not pillow_compat.is_installed()
    sys.modules.pop(pillow_compat.DEVICE_MODULE, None)  # a first import, as in a fresh train.py process
    try:
        for m in mods:  # what timm's train.py does with them
            importlib.import_module(m)
    except ModuleNotFoundError as e:
        if e.name != 'hgrn_tools':
            raise
        pytest.skip('hgrn is not installed (pip install -e .): hgrn_tools is not importable')
    assert pillow_compat.is_installed() or not pillow_compat.needs_guard()


# --------------------------------------------------------------------------------------------
# The recipes' training transform, every RandAugment op at both ends of the magnitude scale
# --------------------------------------------------------------------------------------------

class _Images(torch.utils.data.Dataset):
    def __init__(self, n, seed=0):
        rng = np.random.RandomState(seed)
        self.images = [Image.fromarray(rng.randint(0, 256, size=(40 + i % 9, 36 + i % 7, 3), dtype=np.uint8))
                       for i in range(n)]
        self.transform = None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), i % NUM_CLASSES


def _find_randaugment(transform):
    stack = [transform]
    while stack:
        t = stack.pop()
        if isinstance(t, RandAugment):
            return t
        stack.extend(getattr(t, 'transforms', []))
    raise AssertionError(f'no RandAugment in {transform}')


@pytest.mark.parametrize('path', RECIPES, ids=os.path.basename)
def test_recipe_transform_runs_every_op_at_extreme_magnitudes(path):
    """The training transform hgrn-train builds for the recipe (timm's create_loader / create_transform with
    the recipe's crop, flip, RandAugment, random erasing, interpolation, prefetcher), run over 160 images
    with every RandAugment op's magnitude forced to the top (10, where posterize keeps 0 bits) and to 0.
    Each op must run at least once at each end; 0-bit posterize must give the black image."""
    cfg = _recipe(path)
    args = T.parse_args(['--config', path, '--data-dir', '/nonexistent', *SHRINK, '--batch-size', '32'])
    assert args.aa == cfg['aa'] and args.aa.startswith('rand-')
    T._import_modules(args)
    device = T._setup_device(args)
    T.install_augment_guards(args)  # as hgrn-train does before it builds transforms
    args.prefetcher = not args.no_prefetcher
    model = T._create_model(args)
    data_config = resolve_data_config(vars(args), model=model)
    ds = _Images(160)
    loader = T.create_train_loader(args, ds, data_config, device)
    ra = _find_randaugment(ds.transform)
    names = [op.name for op in ra.ops]
    assert 'PosterizeIncreasing' in names and len(names) == len(set(names))

    calls, black = {}, []
    for op in ra.ops:
        def counted(img, *a, _fn=op.aug_fn, _name=op.name, **k):
            out = _fn(img, *a, **k)
            calls[_name] = calls.get(_name, 0) + 1
            if _name.startswith('Posterize') and a and a[0] <= 0:
                black.append(out.getextrema() == ((0, 0),) * len(out.getbands()))
            return out
        op.aug_fn = counted
        op.magnitude_std = 0

    for magnitude in ('max', 0):
        calls.clear()
        for op in ra.ops:
            op.magnitude = (op.magnitude_max or AA._LEVEL_DENOM) if magnitude == 'max' else 0
        n = 0
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()
            n += x.shape[0]
        assert n == len(ds)
        missing = sorted(set(names) - set(calls))
        assert not missing, f'magnitude {magnitude}: ops never run: {missing}'
    assert black and all(black), 'posterize with 0 bits must give the black image (as with Pillow < 13)'


# --------------------------------------------------------------------------------------------
# Each recipe trained end to end by hgrn-train (shrunk model, small ImageFolder)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """train/ (12 PNGs per class) and val/ (3 per class), 4 classes of 40x40 noise around a class colour."""
    root = tmp_path_factory.mktemp('folder')
    rng = np.random.RandomState(0)
    for split, n in (('train', 12), ('val', 3)):
        for c in range(NUM_CLASSES):
            d = root / split / f'class{c}'
            d.mkdir(parents=True)
            base = np.array([60 * c, 255 - 60 * c, 128], dtype=np.int64)
            for i in range(n):
                arr = np.clip(base + rng.randint(-40, 41, size=(40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f'{i}.png')
    return str(root)


def _summary(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('path,extra', [
    (p, ['--model-ema', '--aug-repeats', '3'] if 'tiny' in os.path.basename(p) else []) for p in RECIPES],
    ids=[os.path.basename(p).replace('.yaml', '') + ('+ema+aug_repeats' if 'tiny' in p else '') for p in RECIPES])
def test_recipe_trains_end_to_end(path, extra, image_folder, tmp_path, monkeypatch, caplog):
    """hgrn-train --config <recipe> for 2 epochs of 3 steps: the recipe's mixup / cutmix, RandAugment (its
    magnitude raised to 10 so that 0-bit posterize certainly happens), random erasing, label smoothing, AMP
    (bfloat16 on the CPU), AdamW with linear lr scaling, cosine schedule with warm-up, grad clipping,
    drop path, checkpoints. The tiny recipe also runs with EMA and with --aug-repeats (ignored, with a
    warning, on one process)."""
    cfg = _recipe(path)
    compat = T._pillow_compat()
    compat.install()
    blacks = []
    if compat.is_installed():
        mod = _installed_compat_module()
        real_black = mod._black
        monkeypatch.setattr(mod, '_black', lambda img: blacks.append(1) or real_black(img))
    argv = ['--config', path, '--data-dir', image_folder, '--val-split', 'val', *SHRINK, '--batch-size', '16',
            '--epochs', '2', '--output', str(tmp_path), '--aa', _at_max_magnitude(cfg['aa']), *extra]
    args = T.parse_args(argv)
    for k in ('mixup', 'cutmix', 'reprob', 'smoothing', 'amp', 'drop_path', 'opt', 'sched', 'warmup_epochs',
              'lr_base', 'lr_base_scale', 'clip_grad', 'train_interpolation'):
        assert getattr(args, k) == cfg[k], k
    caplog.set_level('INFO')
    res = T.run(args)

    rows = _summary(res['summary'])
    assert [int(r['epoch']) for r in rows] == [0, 1]
    assert all(math.isfinite(float(r['train_loss'])) for r in rows)
    assert 0.0 <= res['eval']['top1'] <= 100.0 and math.isfinite(res['eval']['loss'])
    assert args.lr == pytest.approx(cfg['lr_base'] * 16 / cfg['lr_base_size'])  # linear scaling, as the recipe
    assert 'AMP: autocast torch.bfloat16' in caplog.text
    if compat.is_installed():
        assert blacks, '0-bit posterize never ran: raise the number of images'
    if '--model-ema' in extra:
        assert 'ema_top1' in res['eval'] and 'Eval (EMA)' in caplog.text
        assert 'aug_repeats 3 ignored' in caplog.text

        # checkpoint averaging: timm's avg_checkpoints.py reads the epoch checkpoints with
        # timm.models.load_state_dict and averages them; the average loads and evaluates in hgrn-train
        from timm.models import load_state_dict
        ckpts = sorted(glob.glob(os.path.join(res['output_dir'], 'checkpoint-*.pth.tar')))
        assert len(ckpts) == 2
        sds = [load_state_dict(c) for c in ckpts]
        avg = {k: sum(sd[k].float() for sd in sds) / len(sds) for k in sds[0]}
        avg_path = str(tmp_path / 'avg.pth')
        torch.save(avg, avg_path)
        out = T.run(T.parse_args(['--config', path, '--data-dir', image_folder, '--val-split', 'val', *SHRINK,
                                  '--validate-only', '--initial-checkpoint', avg_path]))
        assert math.isfinite(out['eval']['loss'])


def test_recipe_under_torchrun_with_repeated_augmentation(image_folder, tmp_path):
    """The tiny recipe on 2 CPU processes (gloo) with DeiT's repeated augmentation (timm's RepeatAugSampler)."""
    path = os.path.join(ROOT, 'configs', 'hgrn_deit_tiny_in1k.yaml')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
           '-m', 'tools.train', '--config', path, '--data-dir', image_folder,
           '--val-split', 'val', *SHRINK, '--batch-size', '8', '--epochs', '1', '--output', str(tmp_path),
           '--experiment', 'ra', '--aug-repeats', '3', '--aa', _at_max_magnitude(_recipe(path)['aa'])]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert 'backend gloo' in log and 'repeated augmentation: 3 repeats' in log and 'ignored' not in log
    info = json.load(open(os.path.join(tmp_path, 'train', 'ra', 'weights_sha256.json')))
    assert info['in_sync'] and len(info['ranks']) == 2
