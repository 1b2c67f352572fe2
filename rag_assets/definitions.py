"""The Dagster code location (workspace.yaml, `[tool.dg]` in pyproject.toml and `dg check defs` load it).

Everything Dagster loads lives under `rag_assets/defs/` (Dagster's `dg` project layout) and is found
there by Dagster's own defs-folder loader. Definitions are built when this function is called, not at
import time, so the settings (environment variables) are read when the code location loads.
"""

import warnings
from pathlib import Path

import dagster as dg
from dagster.components.core.component_tree import ComponentTree


@dg.definitions
def defs() -> dg.Definitions:
    import rag_assets.defs

    # Dagster 1.13 passes `owners=None` to SensorDefinition itself and then warns that the parameter is
    # beta; the warning is about Dagster's own call, not this project, so it is silenced here only.
    warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)
    # `load_from_defs_folder` would look for pyproject.toml, which an installed package (the images) has
    # not: the tree is built from the defs module itself instead. The loader's own helpers are "preview".
    tree = ComponentTree.from_module(defs_module=rag_assets.defs, project_root=Path(__file__).parent.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs()
