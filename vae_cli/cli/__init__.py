"""The four commands (vae-train, vae-eval, vae-sample, vae-report): short orchestrators over the
layers below, the checks of the values users type, and one error exit."""

import importlib.util
import sys
from pathlib import Path


def _plugins_on_path() -> None:
    """Hydra finds plugins by listing the hydra_plugins folders on sys.path. An editable install (pip install -e)
    serves ours (hparams_search=optuna's sweeper) through an import hook that such a listing does not see, so the
    folder holding it goes on the path too; after a regular install it is there already."""
    spec = importlib.util.find_spec("hydra_plugins.vae_cli_search")
    root = str(Path(spec.origin).parents[2]) if spec is not None and spec.origin else None
    if root is not None and root not in sys.path:
        sys.path.append(root)


_plugins_on_path()  # here, so that every way into the commands' configs (entry points, Hydra's compose) finds it
