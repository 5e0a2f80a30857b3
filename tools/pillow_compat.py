"""A guard for timm's RandAugment / AutoAugment posterize under Pillow >= 13 (0 bits -> black image).

timm's ``posterize`` op calls ``PIL.ImageOps.posterize(img, bits)``. The paper's RandAugment
(``rand-m9-mstd0.5-inc1``) draws magnitudes up to 10, where timm's ``PosterizeIncreasing`` keeps
``4 - int(m / 10 * 4) = 0`` bits: by design a black image, which is what Pillow up to 12.x returned
(its lookup table ``i & ~(2 ** (8 - bits) - 1)`` is all zeros for bits <= 0). Pillow 13 raises
``ValueError: bits must be between or equal to 1 and 8`` instead, and the first such image (about one
in a few hundred on ImageNet) kills the run. timm's ``Posterize`` (AutoAugment, non-increasing
RandAugment) and AugMix reach 0 bits too.

``install()`` makes exactly that case return what Pillow 12 returned and changes nothing else:

- only if timm's ``posterize`` really rejects 0 bits (probed on a 1x1 image: with Pillow < 13, or a
  timm that handles it, nothing is patched);
- only ``bits_to_keep <= 0`` on ``L`` / ``RGB`` images (the modes Pillow 12 posterized) is answered
  here, with Pillow 12's own lookup table (all zeros); every other call goes to timm's function;
- it replaces ``timm.data.auto_augment.posterize`` and the ``NAME_TO_OP`` entries that point to it
  (``AugmentOp`` copies its function from ``NAME_TO_OP`` when it is built, so install before the
  transforms are built: hgrn-train does; timm's ``train.py`` imports ``device_modules`` first thing);
- idempotent (also when this file is imported under two names, ``hgrn_tools.pillow_compat`` and
  ``tools.pillow_compat``), and ``uninstall()`` restores timm's function.

It is applied by ``hgrn-train`` and, for timm's ``train.py``, by the recipes' ``device_modules``
(importing this module installs it). Importing ``hgrn_vision`` does not patch timm.
"""
from PIL import Image

__all__ = ['install', 'uninstall', 'is_installed', 'needs_guard', 'posterize']

# the name recipes put in device_modules so that timm's train.py imports (= installs) this guard
DEVICE_MODULE = 'hgrn_tools.pillow_compat'

# attribute on the installed function: timm's original posterize (also the "installed" marker)
_ORIGINAL_ATTR = '_hgrn_timm_posterize'
_POSTERIZE_NAMES = ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal')


def _timm_aa():
    from timm.data import auto_augment
    return auto_augment


def _timm_original():
    fn = _timm_aa().posterize
    return getattr(fn, _ORIGINAL_ATTR, fn)


def _black(img):
    # Pillow 12's posterize(img, bits <= 0): img.point() with the lookup table i & 0 = 0 per band
    return img.point([0] * (256 * len(img.getbands())))


def posterize(img, bits_to_keep, **kwargs):
    """timm's posterize, with 0 (or fewer) bits on L / RGB giving the black image as under Pillow < 13.

    A module-level function (not a closure), so a transform that holds it pickles by reference:
    DataLoader workers started with "spawn" unpickle it and fall back to timm's own function.
    """
    if bits_to_keep <= 0 and img.mode in ('L', 'RGB'):
        return _black(img)
    return _timm_original()(img, bits_to_keep, **kwargs)


def needs_guard(fn=None):
    """True when timm's posterize (or ``fn``) raises on 0 bits (Pillow >= 13), i.e. the guard is needed."""
    fn = _timm_original() if fn is None else fn
    try:
        fn(Image.new('RGB', (1, 1), (255, 255, 255)), 0)
    except ValueError:
        return True
    return False


def is_installed():
    return hasattr(_timm_aa().posterize, _ORIGINAL_ATTR)


def install():
    """Install the guard where it is needed. Returns True when it is active (now or already), else False."""
    aa = _timm_aa()
    if is_installed():
        return True
    original = getattr(aa, 'posterize', None)
    if original is None or not hasattr(aa, 'NAME_TO_OP') or not needs_guard(original):
        return False
    # the marker lives on the installed function, so a second copy of this module (imported under its
    # other name) sees it through is_installed()
    setattr(posterize, _ORIGINAL_ATTR, original)
    aa.posterize = posterize
    for name in _POSTERIZE_NAMES:
        if aa.NAME_TO_OP.get(name) is original:
            aa.NAME_TO_OP[name] = posterize
    return True


def uninstall():
    """Put timm's own posterize back (transforms built while installed keep the guarded function)."""
    aa = _timm_aa()
    fn = aa.posterize
    if not hasattr(fn, _ORIGINAL_ATTR):
        return False
    original = getattr(fn, _ORIGINAL_ATTR)
    aa.posterize = original
    for name, op in list(aa.NAME_TO_OP.items()):
        if op is fn:
            aa.NAME_TO_OP[name] = original
    delattr(fn, _ORIGINAL_ATTR)
    return True


install()
