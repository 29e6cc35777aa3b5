"""The model families clipx reads, one module each: a family's config class (a `CLIPConfig` subclass with
its readout, its config.json `model_types`, `read`, `to_dict` and `layout`) registers the family when the
module is imported, and every module here is imported with this package, so adding a family is adding
its file. `openai.py` and `open_clip.py` read OpenAI-layout state dicts into the CLIP family."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
