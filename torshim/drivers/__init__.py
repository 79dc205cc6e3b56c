"""Switch drivers, one file per flavour. Importing this package registers all of them."""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
