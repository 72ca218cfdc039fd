"""Methods: each one a module (or small package) of this folder that adds its own
config section, inserted modules, loss terms and published-model importer, and
registers them where the engine looks them up (``utils.config_schema.add_config_section``,
``modeling.stages.INSERTIONS``, ``layers.criterion.LOSS_TERMS``,
``modeling.importer.IMPORTERS``). Every module here is imported with this package,
so a method in a new file takes part by its presence alone.
"""
from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
