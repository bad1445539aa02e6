"""The loggers beside TensorBoard (CSV, MLflow, W&B offline), each read back through its own package's reader,
a run without TensorBoard, the learning-rate monitor, and a logger whose package is missing."""

import csv
import json
import os
import struct
from pathlib import Path

import pytest

from vae_cli.errors import UserError

from conftest import QUIET, compose, read_scalars, run_vae_train, train

EPOCHS, STEPS_PER_EPOCH, DECAY = 2, 11, 0.5  # digits: 1350 training examples in batches of 128


@pytest.fixture(scope="module")
def all_loggers(tmp_path_factory) -> tuple[Path, Path, object]:
    """One run as a user starts it, with every logger at once and a learning-rate schedule: (working directory,
    run directory, the finished process)."""
    here = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, not one this machine points at
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written outside the test
            env.setenv(var, str(here / "wandb-home"))
        proc = run_vae_train(
            "logger=[tensorboard,csv,mlflow,wandb]",
            f"trainer.max_epochs={EPOCHS}",
            "trainer.log_every_n_steps=2",
            f"optim.lr_decay={DECAY}",
            *QUIET,
            cwd=here,
        )
    (run,) = (here / "outputs").glob("20*/*")
    return here, run, proc


@pytest.mark.slow
def test_every_logger_runs_without_a_warning(all_loggers):
    _, _, proc = all_loggers
    assert "warn" not in proc.stdout.lower(), proc.stdout
    assert "warn" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_csv_metrics_read_back_with_the_csv_module(all_loggers):
    _, run, _ = all_loggers
    with open(run / "csv" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def values(name):
        return [float(r[name]) for r in rows if r.get(name)]

    assert len(values("train/elbo")) == EPOCHS * STEPS_PER_EPOCH // 2
    assert len(values("val/elbo")) == EPOCHS
    final = json.loads((run / "metrics.json").read_text())
    assert values("test/elbo") == [pytest.approx(final["test/elbo"], rel=1e-6)]
    assert values("lr-Adam") == pytest.approx([1e-3, 1e-3 * DECAY])


@pytest.mark.slow
def test_mlflow_holds_the_metrics_params_and_checkpoints(all_loggers, tmp_path):
    from mlflow.tracking import MlflowClient

    here, run, _ = all_loggers
    client = MlflowClient(f"sqlite:///{here}/outputs/mlflow.db")  # the store `mlflow ui` is pointed at
    (found,) = client.search_runs([client.get_experiment_by_name("vae-cli").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.info.run_name == f"{run.parent.name}/{run.name}"  # named as its directory below outputs/
    rid = found.info.run_id
    assert len(client.get_metric_history(rid, "train/elbo")) == EPOCHS * STEPS_PER_EPOCH // 2
    assert len(client.get_metric_history(rid, "val/elbo")) == EPOCHS
    final = json.loads((run / "metrics.json").read_text())
    (test_elbo,) = client.get_metric_history(rid, "test/elbo")
    assert test_elbo.value == pytest.approx(final["test/elbo"], rel=1e-6)
    params = found.data.params
    assert params["model.latent_dim"] == "16" and params["optim.lr_decay"] == str(DECAY)
    assert params["logger"] == "tensorboard,csv,mlflow,wandb"
    assert not any(k.startswith("logger.") for k in params)  # where it writes is not how it was made
    import torch

    assert params["version/torch"] == torch.__version__  # a sweep across versions is a column
    assert params["version/vae_cli"] == __import__("vae_cli").__version__ and params["machine/host"]
    listed = {f.path for folder in ("best", "last") for f in client.list_artifacts(rid, folder)}
    assert {"best/best.ckpt", "last/last.ckpt"} <= listed
    for name in ("best", "last"):
        copy = client.download_artifacts(rid, f"{name}/{name}.ckpt", str(tmp_path))
        assert Path(copy).read_bytes() == (run / "checkpoints" / f"{name}.ckpt").read_bytes()


def wandb_records(path: Path):
    """The records of a W&B run's transaction log (its .wandb file), decoded with wandb's own record schema. wandb
    reads these files in its Go core; the framing is LevelDB's log format: 32 KiB blocks of records, each with a
    7-byte header (checksum, length, type: 1 whole, 2 first, 3 middle, 4 last piece)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pieces = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(pieces)
            pieces = b""


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics_and_settings(all_loggers):
    _, run, _ = all_loggers
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, names = [], {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "run":
            names.append(record.run.display_name)
    assert names and set(names) == {f"{run.parent.name}/{run.name}"}

    def values(name):
        return [h[name] for h in history if name in h]

    assert len(values("train/elbo")) == EPOCHS * STEPS_PER_EPOCH // 2
    assert len(values("val/elbo")) == EPOCHS
    final = json.loads((run / "metrics.json").read_text())
    assert values("test/elbo") == [pytest.approx(final["test/elbo"], rel=1e-6)]
    assert config["model.latent_dim"] == 16


@pytest.mark.slow
def test_a_learning_rate_schedule_is_logged(all_loggers, tmp_path):
    _, run, _ = all_loggers
    lr = read_scalars(run)["lr-Adam"]
    assert [v for _, v in lr] == pytest.approx([1e-3, 1e-3 * DECAY])
    # Without a schedule there is nothing to monitor: no such column.
    quiet = train(tmp_path, "constant", "logger=csv", "trainer.max_epochs=1")
    with open(quiet / "csv" / "version_0" / "metrics.csv", newline="") as f:
        assert "lr-Adam" not in next(csv.reader(f))


@pytest.mark.slow
def test_without_tensorboard_images_and_projector_are_skipped_with_one_line(tmp_path):
    run = train(tmp_path, "run", "logger=csv", "trainer.max_epochs=1")
    assert (run / "metrics.json").is_file() and (run / "csv" / "version_0" / "metrics.csv").is_file()
    assert not list(run.glob("events.out.tfevents.*")) and not (run / "projector_config.pbtxt").exists()
    lines = [line for line in (run / "train.log").read_text().splitlines() if "no TensorBoard logger" in line]
    assert len(lines) == 1 and "skipped" in lines[0] and "logger=[csv]" in lines[0]


def test_a_logger_whose_package_is_missing_is_named_with_its_extra(monkeypatch):
    from importlib.util import find_spec

    from vae_cli.cli import startup

    missing = [module for module, _, _ in startup.LOGGER_PACKAGES.values() if find_spec(module) is None]
    if missing:  # as in CI's environment of the lowest versions (find_spec: without the seconds of importing them)
        pytest.skip(f"needs {' and '.join(missing)}, installed with the test extra: pip install -e '.[test]'")
    for name, (module, _, _) in startup.LOGGER_PACKAGES.items():  # installed with the test extras
        assert __import__("importlib.util").util.find_spec(module) is not None, name
    startup.check_logger_packages(compose("train", "logger=[tensorboard,mlflow,wandb]"))
    monkeypatch.setitem(startup.LOGGER_PACKAGES, "mlflow", ("not_installed_mlflow", "MLflow", "mlflow"))
    with pytest.raises(UserError, match=r"logger=mlflow needs MLflow, which is not installed.*'vae-cli\[mlflow\]'"):
        startup.check_logger_packages(compose("train", "logger=[tensorboard,mlflow]"))
    startup.check_logger_packages(compose("train"))  # the default asks for nothing optional


@pytest.mark.slow
def test_a_missing_logger_package_stops_the_run_with_exit_2(tmp_path):
    # wandb made unimportable in that process, as on a machine without it (find_spec answers None).
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]))
        proc = run_vae_train("logger=[tensorboard,wandb]", "trainer.max_epochs=1", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'vae-cli[wandb]'" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_mlflow_logs_where_mlflow_tracking_uri_points(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    run = train(tmp_path, "run", "logger=mlflow", "trainer.max_epochs=1")
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("vae-cli").experiment_id])
    assert found.info.run_name == str(run)  # a run directory outside outputs/ is named by its path
    assert found.data.metrics["test/elbo"] == pytest.approx(json.loads((run / "metrics.json").read_text())["test/elbo"])
