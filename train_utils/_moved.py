"""The modules that moved out of train_utils/ in this release, still importable under their old names for one
more release, since users' scripts import them: `import train_utils.prediction` gives a module holding the
names of the new modules, and a FutureWarning saying where they are now.
"""
import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

# old name in train_utils -> the modules its names are in now
MOVED = {
    "inference": ("inference.forward", "inference.modes", "inference.loading"),
    "prediction": ("inference.forward", "inference.photos", "inference.outputs", "inference.folder"),
    "pictures": ("visualization.pictures",),
    "plots": ("visualization.plots",),
    "val_pictures": ("visualization.val_pictures",),
    "visual": ("recording.run_files", "recording.recorders", "visualization.recorders"),
    "recorders": ("recording.run_files", "recording.recorders"),
    "run_dir": ("recording.run_files", "recording.run_dir"),
    "history": ("recording.run_files", "recording.history"),
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder of train_utils.<old name>, consulted after the normal ones (which no longer find those files)."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        package, _, name = fullname.rpartition(".")
        return importlib.machinery.ModuleSpec(fullname, self) if package == self.package and name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a plain module object

    def exec_module(self, module: ModuleType) -> None:
        targets = MOVED[module.__name__.rpartition(".")[2]]
        warnings.warn(f"{module.__name__} has moved to {', '.join(targets)}: import from there; the old name "
                      f"goes in the next release", FutureWarning, stacklevel=2)
        for target in targets:
            names = vars(importlib.import_module(target))
            module.__dict__.update({k: v for k, v in names.items() if not (k.startswith("__") and k.endswith("__"))})


def install(package: str) -> None:
    """Makes the old module names of `package` importable (once per process)."""
    if not any(isinstance(f, MovedModules) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(MovedModules(package))
