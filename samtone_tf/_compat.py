"""The module paths of the flat layout (``samtone_tf.model``, ``samtone_tf.encoders``, ...)
as aliases of the modules that now hold their code, for one release, without a warning:
``import samtone_tf.model`` gives the module object ``samtone_tf.towers.model``, so its
names (and monkeypatching them) work as before. Names that moved between modules are
listed in docs/layout.md.
"""

import importlib
import importlib.abc
import importlib.util
import sys

MOVED_MODULES = {
    "samtone_tf.analysis": "samtone_tf.evaluation.analysis",
    "samtone_tf.download": "samtone_tf.data.download",
    "samtone_tf.encoders": "samtone_tf.towers.encoders",
    "samtone_tf.gradcache": "samtone_tf.towers.gradcache",
    "samtone_tf.mining": "samtone_tf.training.mining",
    "samtone_tf.model": "samtone_tf.towers.model",
    "samtone_tf.pretrained": "samtone_tf.towers.pretrained",
    "samtone_tf.reqa": "samtone_tf.data.reqa",
    "samtone_tf.resilience": "samtone_tf.training.resilience",
    "samtone_tf.retrieval": "samtone_tf.evaluation.retrieval",
    "samtone_tf.strategy": "samtone_tf.training.strategy",
    "samtone_tf.tfrs_eval": "samtone_tf.evaluation.tfrs",
    "samtone_tf.tokenization": "samtone_tf.data.tokenization",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.original_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the target module has run already; the import system set its __spec__ to the
        # alias's: give it back its own
        module.__spec__ = self.original_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(MOVED_MODULES[fullname]))
        return None


def install():
    """Puts the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def lazy_exports(package, names):
    """``(__getattr__, __dir__)`` for a package whose ``names`` (``{name: module}``) are
    imported from ``module`` when first asked for, so that the package's own import pulls
    in none of its modules (no import order can then run in a circle)."""

    def __getattr__(name):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
