"""hparams_search=optuna's sweeper as a Hydra plugin (hydra/sweeper=optuna_study); the search itself is _impl.py."""

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from vae_cli.cli.study import SearchConfig

from ._impl import Search

ConfigStore.instance().store(group="hydra/sweeper", name="optuna_study", node=SearchConfig, provider="vae-cli")


class OptunaStudySweeper(Sweeper):
    def __init__(self, **settings) -> None:
        self.search = Search(**settings)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
