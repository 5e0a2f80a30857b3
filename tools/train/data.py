"""hgrn-train's data: the embedded digits set, timm datasets and loaders, mixup / cutmix, the Pillow guard.

Everything but the digits set is timm's (create_dataset, create_loader and its transforms, Mixup /
FastCollateMixup); this file passes the config's values to it and turns a bad data path into a clear error.
"""
import logging
import os

import torch

from timm import utils
from timm.data import create_dataset, create_loader, Mixup, FastCollateMixup

from .config import DIGITS_DATASET, TrainError

_logger = logging.getLogger('hgrn_train')


# --------------------------------------------------------------------------------------------
# The embedded dataset: scikit-learn's 8x8 handwritten digits (ships inside the sklearn wheel)
# --------------------------------------------------------------------------------------------

class DigitsDataset(torch.utils.data.Dataset):
    """sklearn's 1,797 8x8 digits as RGB PIL images upsampled (bilinear) to `size` px, fixed split.

    The split is a seeded permutation (independent of the training seed): 1,497 train / 300 val.
    Pixel values 0..16 map to 0..255. Works with timm's transforms / loaders like any ImageDataset.
    """
    NUM_VAL = 300
    SPLIT_SEED = 0

    def __init__(self, split='train', size=16, transform=None, num_samples=None):
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover
            raise TrainError('the embedded digits dataset needs scikit-learn: pip install "hgrn[digits]"') from e
        import numpy as np
        from PIL import Image
        if split in ('validation', 'val', 'valid', 'eval', 'test'):
            split = 'validation'
        elif split != 'train':
            raise TrainError(f'digits dataset has splits "train" and "validation", not "{split}"')
        d = load_digits()
        perm = np.random.RandomState(self.SPLIT_SEED).permutation(len(d.target))
        idx = perm[self.NUM_VAL:] if split == 'train' else perm[:self.NUM_VAL]
        if num_samples:
            idx = idx[:num_samples]
        self.targets = [int(t) for t in d.target[idx]]
        imgs = (d.images[idx] * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
        self.images = [Image.fromarray(im, mode='L').resize((size, size), Image.BILINEAR).convert('RGB')
                       for im in imgs]
        self.transform = transform
        self.split = split

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


# --------------------------------------------------------------------------------------------
# Datasets and loaders (timm's)
# --------------------------------------------------------------------------------------------

def build_dataset(args, split, is_training):
    """The split as a dataset: the digits, or timm's create_dataset, with a clear error for a bad path."""
    if args.dataset == DIGITS_DATASET:
        size = args.img_size or (args.input_size[-1] if args.input_size else 16)
        n = args.train_num_samples if is_training else args.val_num_samples
        return DigitsDataset(split, size=size, num_samples=n)
    root = args.data_dir or args.data
    if not root:
        raise TrainError(
            f'no data path: pass --data-dir DIR (dataset "{args.dataset or "image folder"}"), '
            f'or run hgrn-train without --config for the embedded digits job')
    folder = args.dataset in ('', 'folder', 'imagefolder', 'image_folder') or args.dataset.startswith('folder/')
    if (folder or not args.dataset_download) and not os.path.exists(root):
        raise TrainError(f'data path does not exist: {root}')
    try:
        ds = create_dataset(
            args.dataset, root=root, split=split, is_training=is_training,
            class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
            seed=args.seed, repeats=args.epoch_repeats if is_training else 0,
            input_img_mode=args.input_img_mode,
            num_samples=args.train_num_samples if is_training else args.val_num_samples)
    except Exception as e:
        raise TrainError(f'cannot open the {split} split of dataset "{args.dataset}" under {root}: '
                         f'{type(e).__name__}: {e}') from None
    try:
        n = len(ds)
    except TypeError:  # an iterable dataset has no length
        n = None
    if n == 0:
        raise TrainError(f'the {split} split under {root} has no images')
    return ds


def create_train_loader(args, dataset, data_config, device, collate_fn=None):
    """timm's create_loader with the training transform the config asks for (crop, flips, RandAugment /
    AutoAugment, random erasing, ...); sets dataset.transform. The tests build the recipes' loaders here."""
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    aug_repeats = args.aug_repeats if args.distributed else 0  # timm's RepeatAugSampler needs torch.distributed
    if args.aug_repeats and not args.distributed and utils.is_primary(args):
        _logger.warning(f'aug_repeats {args.aug_repeats:g} ignored: repeated augmentation splits the repeats '
                        f'across processes and needs torchrun (timm\'s RepeatAugSampler)')
    elif aug_repeats and utils.is_primary(args):
        _logger.info(f'repeated augmentation: {aug_repeats:g} repeats (timm RepeatAugSampler)')
    return create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        re_split=args.resplit, train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0., auto_augment=args.aa,
        num_aug_repeats=aug_repeats,
        interpolation=train_interpolation, mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, collate_fn=collate_fn,
        pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher,
        use_multi_epochs_loader=args.use_multi_epochs_loader, worker_seeding=args.worker_seeding)


def create_eval_loader(args, dataset, data_config, device):
    """timm's create_loader with the evaluation transform (resize, center crop at crop_pct, normalize)."""
    return create_loader(
        dataset, input_size=data_config['input_size'],
        batch_size=args.validation_batch_size or args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=args.distributed, crop_pct=data_config['crop_pct'],
        pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher)


def mixup_active(args):
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def build_mixup(args):
    """(collate_fn, mixup_fn): timm's mixup / cutmix in the loader's collate with the prefetcher, else on
    each batch in the training step; (None, None) when the config turns neither on."""
    if not mixup_active(args):
        return None, None
    mixup_args = dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=args.num_classes)
    if args.prefetcher:
        return FastCollateMixup(**mixup_args), None
    return None, Mixup(**mixup_args)


# --------------------------------------------------------------------------------------------
# The Pillow guard for timm's augmentations (tools/pillow_compat.py)
# --------------------------------------------------------------------------------------------

def pillow_compat_module():
    """tools/pillow_compat.py under this package's name. Imported only when asked for, since importing it
    installs the guard: importing the trainer does not patch timm, running it does."""
    from .. import pillow_compat
    return pillow_compat


def install_augment_guards(args):
    """Guards for timm augmentations that the installed Pillow breaks (tools/pillow_compat.py); run before
    any transform is built. Today: timm's posterize with 0 bits (RandAugment at magnitude 10), which
    Pillow >= 13 rejects: it gives the black image again, as with Pillow < 13."""
    compat = pillow_compat_module()
    if compat.install() and utils.is_primary(args):
        import PIL
        _logger.info(f'Pillow {PIL.__version__} rejects posterize with 0 bits: timm\'s posterize is guarded '
                     f'(0 bits -> black image, as with Pillow < 13; {compat.DEVICE_MODULE})')
