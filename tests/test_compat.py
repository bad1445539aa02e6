"""vae_cli/compat.py, the one module that uses other libraries' private names: no other module does, and each name
still exists and behaves as compat.py assumes, in every version the constraints files install; and the parts of
Hydra's submitit launcher that hydra/launcher=slurm builds on."""

import ast
import inspect
import types
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from vae_cli import compat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    p
    for top in ("vae_cli", "hydra_plugins")
    for p in (ROOT / top).rglob("*.py")
    if "configs" not in p.relative_to(ROOT).parts
)


HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}  # config keys, not private names


# A named tuple's public methods, underscored so that no field name can shadow them.
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in HYDRA_KEYS | NAMEDTUPLE


def _own_private_names() -> dict[str, set[str]]:
    """The private names the package defines itself (functions, classes, the attributes it assigns), each with the
    classes that define it ("" outside a class)."""
    own = {}

    def visit(node, cls: str) -> None:
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [child.name]
            elif isinstance(child, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                names = [
                    n.attr if isinstance(n, ast.Attribute) else n.id
                    for target in targets
                    for n in ast.walk(target)
                    if isinstance(n, (ast.Attribute, ast.Name))
                ]
            for name in filter(_private, names):
                own.setdefault(name, set()).add(cls)
            visit(child, child.name if isinstance(child, ast.ClassDef) else cls)

    for path in SOURCES:
        visit(ast.parse(path.read_text()), "")
    return own


def _foreign_private_uses(path: Path, own: dict[str, set[str]]) -> list[str]:
    found = []

    def visit(node, cls: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Attribute) and _private(child.attr):
                value = child.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    foreign = child.attr not in own  # only a base class from a library defines it
                elif isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
                    foreign = not own.get(child.attr, set()) - {cls}  # only this class (an override) defines it
                else:
                    foreign = True
                if foreign:
                    found.append(f"{path.name}:{child.lineno} {ast.unparse(child)}")
            elif isinstance(child, (ast.Import, ast.ImportFrom)) and not getattr(child, "level", 0):
                modules = [
                    a.name if isinstance(child, ast.Import) else f"{child.module}.{a.name}" for a in child.names
                ]  # from torch import _C: the name is private
                found.extend(
                    f"{path.name}:{child.lineno} import {m}"
                    for m in modules
                    if any(_private(part) for part in m.split("."))
                )
            visit(child, child.name if isinstance(child, ast.ClassDef) else cls)

    visit(ast.parse(path.read_text()), "")
    return found


def test_no_module_but_compat_uses_another_librarys_private_names():
    own = _own_private_names()
    found = [
        use
        for path in SOURCES
        if path.name != "compat.py" or path.parent.name != "vae_cli"
        for use in _foreign_private_uses(path, own)
    ]
    assert found == [], "put these behind a function in vae_cli/compat.py, with a test here"


# ---------------------------------------------------------------------------------------------------------------
# Lightning


class _Tiny(pl.LightningModule):
    def __init__(self, n: int = 2, fail_in_step: bool = False):
        super().__init__()
        self.layer, self.fail_in_step = torch.nn.Linear(n, 1), fail_in_step

    def training_step(self, batch, _):
        if self.fail_in_step:
            raise ValueError("a step that fails")
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, self.layer.in_features)))


def _trainer(tmp_path) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_attached_trainer_is_none_until_a_trainer_attaches(tmp_path):
    module = _Tiny()
    assert compat.attached_trainer(module) is None
    trainer = _trainer(tmp_path)
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


def test_the_average_model_exists_after_setup_and_moves_with_to():
    from torch.optim.swa_utils import AveragedModel

    callback, module = pl.callbacks.WeightAveraging(), _Tiny()
    assert compat.average_model(callback) is None
    callback.setup(None, module, "fit")
    average = compat.average_model(callback)
    assert isinstance(average, AveragedModel) and average.to("cpu") is average


def test_a_checkpoint_state_that_does_not_load_is_told_from_other_errors(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit(_Tiny())
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(RuntimeError) as refused:  # the weights of another shape
        _trainer(tmp_path).fit(_Tiny(n=3), ckpt_path=ckpt, weights_only=True)
    assert compat.raised_restoring(refused.value)
    with pytest.raises(ValueError) as other:  # an error once training runs
        _trainer(tmp_path).fit(_Tiny(fail_in_step=True))
    assert not compat.raised_restoring(other.value)


def test_the_checkpoint_connector_has_the_methods_named():
    from pytorch_lightning.trainer.connectors import checkpoint_connector

    assert Path(checkpoint_connector.__file__).name == compat.RESTORE_FILE
    for name in compat.RESTORE_FRAMES[2:]:  # the first two are public hooks
        assert callable(getattr(checkpoint_connector._CheckpointConnector, name)), name


# ---------------------------------------------------------------------------------------------------------------
# torch


def test_divide_by_norms_divides_each_tensor_in_place_by_its_own_norm():
    torch.manual_seed(0)
    tensors = [torch.randn(3, 4) * 5, torch.randn(7), torch.zeros(2)]
    expected = [t / (t.norm() + 1e-7) for t in tensors]
    first = tensors[0]
    compat.divide_by_norms(tensors, 1e-7)
    assert tensors[0] is first
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got, want)


def test_the_event_file_writer_takes_summaries_and_is_made_again_after_close(tmp_path):
    from pytorch_lightning.loggers.logger import DummyExperiment
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    experiment = SummaryWriter(tmp_path)
    compat.event_file_writer(experiment).add_summary(scalar("x", 1.0))
    experiment.close()
    writer = compat.event_file_writer(experiment)
    writer.add_summary(scalar("x", 2.0))
    writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert compat.event_file_writer(DummyExperiment()) is None  # the processes after the first


# ---------------------------------------------------------------------------------------------------------------
# The MLflow and W&B loggers (installed with the mlflow and wandb extras)


def _checkpoint_callback(folder: Path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(dirpath=folder)
    folder.mkdir()
    callback.last_model_path = str(folder / "last.ckpt")
    Path(callback.last_model_path).write_bytes(b"state")
    return callback


@pytest.mark.slow  # importing mlflow takes seconds
def test_mlflow_logs_each_checkpoint_file_once(tmp_path):
    pytest.importorskip("mlflow")
    from pytorch_lightning.loggers import MLFlowLogger

    logged = []

    class Recorded(MLFlowLogger):
        @property
        def experiment(self):  # the MLflow client, without a store
            return types.SimpleNamespace(
                log_artifact=lambda run, path, folder: logged.append((path, folder)), log_artifacts=lambda *args: None
            )

    logger = Recorded(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", log_model=True)
    assert compat.mlflow_run_started(logger) is False  # made, not started
    callback = _checkpoint_callback(tmp_path / "checkpoints")
    compat.log_checkpoint_files(logger, callback)
    compat.log_checkpoint_files(logger, callback)
    assert logged == [(callback.last_model_path, "last")]


@pytest.mark.slow
def test_mlflow_run_started_once_the_logger_has_its_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(tracking_uri=store, artifact_location=str(tmp_path / "artifacts"), log_model=True)
    assert compat.mlflow_run_started(logger) is False
    logger.experiment  # noqa: B018 (starts the run)
    assert compat.mlflow_run_started(logger) is True
    compat.log_checkpoint_files(logger, _checkpoint_callback(tmp_path / "checkpoints"))
    assert "last/last.ckpt" in [a.path for a in MlflowClient(store).list_artifacts(logger.run_id, "last")]


def test_wandb_init_gets_the_arguments_dict_as_changed(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    got = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: got.update(kwargs))
    logger = WandbLogger(project="p", save_dir=tmp_path, offline=True)
    arguments = compat.wandb_init_arguments(logger)
    assert isinstance(arguments, dict) and {"anonymous", "resume"} <= set(arguments) and arguments["project"] == "p"
    arguments.pop("resume")
    logger.experiment  # noqa: B018 (calls wandb.init)
    assert got["project"] == "p" and "resume" not in got


# ---------------------------------------------------------------------------------------------------------------
# Hydra's submitit launcher, which hydra/launcher=slurm extends (no private names; the parts it relies on that its
# documentation does not state)


def test_the_submitit_launcher_keeps_its_settings_and_runs_a_job_as_the_slurm_launcher_calls_it():
    submitit_launcher = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")

    base = submitit_launcher.BaseSubmititLauncher
    # slurm_launcher.launch maps the launcher itself over the jobs, one list per argument.
    assert list(inspect.signature(base.__call__).parameters) == [
        "self",
        "sweep_overrides",
        "job_dir_key",
        "job_num",
        "job_id",
        "singleton_state",
    ]
    launcher = submitit_launcher.SlurmLauncher(submitit_folder="f", max_num_timeout=0)
    context, config = object(), object()
    launcher.setup(hydra_context=context, task_function=print, config=config)
    assert launcher.params == {"submitit_folder": "f", "max_num_timeout": 0}
    assert launcher.hydra_context is context and launcher.config is config
