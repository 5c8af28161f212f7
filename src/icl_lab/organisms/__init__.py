"""The model organisms: one folder each, holding a task (its data stream and config section), its
measurements (registered with the pipeline), its report section or page, its lab runner, its
presets and its CLI command. The core layers (data, model, train, run, measure, intervene,
pipeline, report) name no organism: each organism registers an `icl_lab.kinds.Organism` record,
which the core looks up by `DataConfig.kind`. Adding an organism is its folder plus one line in
`MODULES` (docs/organisms.md); `icl_lab/__init__.py` imports this package, so the records exist
before any config is parsed. The induction organism (repeated tokens, in-context tasks, text) is
the core itself. After `report` in the flow data -> model -> train -> run -> measure -> intervene
-> pipeline -> report -> organisms -> cli.

Example:
    >>> from icl_lab.kinds import organisms
    >>> [o.kind for o in organisms()]   # ['modular', 'oocr', ...]
"""

from importlib import import_module

# data kind -> its package: the registry's one line per organism
MODULES = {
    "modular": "icl_lab.organisms.grokking",
    "oocr": "icl_lab.organisms.oocr",
    "markov": "icl_lab.organisms.markov",
}

for _module in MODULES.values():
    import_module(_module)  # each package registers its `Organism` record, measurements and presets

__all__ = ["MODULES"]
