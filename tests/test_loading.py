"""What the commands are pointed at (vae_cli/cli/loading.py): which run `latest` means, which file a run directory
means, which saved state a resume takes, the device, and the refusals of a checkpoint that does not fit or would
change what a run's numbers mean, each naming the keys."""

import os
from pathlib import Path

import pytest
import torch

from vae_cli.cli import loading
from vae_cli.errors import UserError


def _run(root: Path, date: str, time: str, checkpoints=True) -> Path:
    run = root / date / time
    (run / "checkpoints" if checkpoints else run).mkdir(parents=True)
    return run


def _state(path: Path, step, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


# -- latest ----------------------------------------------------------------------------------------------------------


def test_latest_is_the_newest_run_with_checkpoints_by_date_then_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loading.latest() is None
    _run(Path("outputs"), "2026-01-02", "09-00-00")
    _run(Path("outputs"), "2026-01-01", "23-59-59")
    _run(Path("outputs"), "2026-01-02", "10-00-00", checkpoints=False)  # a run that saved nothing yet
    assert loading.latest() == Path("outputs/2026-01-02/09-00-00")
    newest = _run(Path("outputs"), "2026-01-03", "00-00-00")
    assert loading.latest() == newest


def test_latest_leaves_sweeps_out_and_latest_sweep_takes_the_newest_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loading.latest(sweep=True) is None
    run = _run(Path("outputs"), "2026-01-01", "00-00-00")
    _run(Path("outputs"), "multirun", "2026-01-15")  # outputs/multirun/<date> is no run of outputs/<date>/<time>
    assert loading.latest() == run
    _run(Path("outputs/multirun"), "2026-02-01", "08-00-00", checkpoints=False)
    sweep = _run(Path("outputs/multirun"), "2026-02-01", "09-00-00", checkpoints=False)
    assert loading.latest(sweep=True) == sweep


# -- resolve_checkpoint ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unset", [None, ""])
def test_an_unset_ckpt_path_is_refused_with_the_forms_it_takes(unset):
    with pytest.raises(UserError) as refused:
        loading.resolve_checkpoint(unset)
    assert str(refused.value) == (
        "ckpt_path is not set; pass a .ckpt file or a run directory, e.g. ckpt_path=outputs/DATE/TIME, "
        "or ckpt_path=latest for the newest run under outputs/."
    )


def test_ckpt_path_latest_without_a_run_names_the_folder_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        loading.resolve_checkpoint("latest")
    assert str(refused.value) == (
        f"ckpt_path=latest: there is no run directory with checkpoints under {tmp_path}/outputs/ (vae-train writes "
        "outputs/DATE/TIME/ below the directory it is started in). Run vae-train here first, or give the run's "
        "path: ckpt_path=path/to/run."
    )


def test_ckpt_path_latest_means_the_newest_runs_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run(Path("outputs"), "2026-01-01", "00-00-00")
    best = _state(run / "checkpoints" / "best.ckpt", 3)
    assert loading.resolve_checkpoint("latest") == best
    assert loading.resolve_checkpoint(Path("latest")) == best


def test_a_run_directory_means_its_named_checkpoint_and_a_file_means_itself(tmp_path):
    run = tmp_path / "run"
    best = _state(run / "checkpoints" / "best.ckpt", 3)
    last = _state(run / "checkpoints" / "last.ckpt", 5)
    assert loading.resolve_checkpoint(run) == best
    assert loading.resolve_checkpoint(str(run), "last.ckpt") == last
    assert loading.resolve_checkpoint(str(last)) == last
    with pytest.raises(UserError) as refused:
        loading.resolve_checkpoint(run, "interrupted.ckpt")
    assert str(refused.value) == (
        f"ckpt_path={str(run)!r}: no checkpoint at {run}/checkpoints/interrupted.ckpt. Pass a .ckpt file or a run "
        "directory that holds checkpoints/interrupted.ckpt, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/"
        "interrupted.ckpt."
    )


def test_a_home_relative_ckpt_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    best = _state(tmp_path / "run" / "checkpoints" / "best.ckpt", 1)
    assert loading.resolve_checkpoint("~/run") == best


def test_a_run_directory_to_resume_means_its_newest_state_and_names_both_when_it_has_neither(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError) as refused:
        loading.resolve_checkpoint(run, None)
    assert (
        "holds checkpoints/interrupted.ckpt or last.ckpt, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/last.ckpt"
        in (str(refused.value))
    )
    last = _state(run / "checkpoints" / "last.ckpt", 10)
    assert loading.resolve_checkpoint(run, None) == last
    interrupted = _state(run / "checkpoints" / "interrupted.ckpt", 12)
    assert loading.resolve_checkpoint(run, None) == interrupted


def test_a_ckpt_path_the_system_cannot_look_at_is_refused_with_its_reason(tmp_path):
    too_long = str(tmp_path / ("x" * 300))
    with pytest.raises(UserError, match=r"ckpt_path='/.*x': File name too long\. Pass a \.ckpt file") as refused:
        loading.resolve_checkpoint(too_long)
    assert too_long[:100] in str(refused.value) and too_long[:101] not in str(refused.value)


# -- newest_state and saved_step --------------------------------------------------------------------------------------


def test_the_state_a_resume_takes_is_the_one_further_into_training(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert loading.newest_state(tmp_path) is None
    last = _state(ckpts / "last.ckpt", 20, mtime_ns=1_000)
    assert loading.newest_state(tmp_path) == last
    interrupted = _state(ckpts / "interrupted.ckpt", 19, mtime_ns=2_000)  # saved later, but from an earlier step
    assert loading.newest_state(tmp_path) == last
    _state(interrupted, 21, mtime_ns=500)
    assert loading.newest_state(tmp_path) == interrupted


def test_at_the_same_step_the_newer_file_is_taken(tmp_path):
    ckpts = tmp_path / "checkpoints"
    last = _state(ckpts / "last.ckpt", 20, mtime_ns=2_000)
    interrupted = _state(ckpts / "interrupted.ckpt", 20, mtime_ns=1_000)
    assert loading.newest_state(tmp_path) == last
    os.utime(interrupted, ns=(3_000, 3_000))
    assert loading.newest_state(tmp_path) == interrupted


def test_a_state_that_cannot_be_read_counts_as_the_least_advanced(tmp_path):
    ckpts = tmp_path / "checkpoints"
    broken = ckpts / "interrupted.ckpt"
    ckpts.mkdir()
    broken.write_bytes(b"not a checkpoint")
    os.utime(broken, ns=(9_000, 9_000))
    assert loading.newest_state(tmp_path) == broken  # alone, it is the one named when it is loaded
    last = _state(ckpts / "last.ckpt", 0, mtime_ns=1_000)
    assert loading.newest_state(tmp_path) == last


@pytest.mark.parametrize(("step", "read"), [(7, 7), (0, 0), (True, None), (7.0, None), ("7", None), (None, None)])
def test_saved_step_is_the_checkpoints_integer_step(tmp_path, step, read):
    assert loading.saved_step(_state(tmp_path / "a.ckpt", step)) == read


def test_saved_step_reads_the_file_memory_mapped_so_that_the_weights_stay_on_disk(tmp_path, monkeypatch):
    from vae_cli import inputs

    asked = []
    real = inputs.load_tensors
    monkeypatch.setattr(inputs, "load_tensors", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    assert loading.saved_step(_state(tmp_path / "a.ckpt", 4)) == 4
    assert asked == [{"mmap": True}]


def test_saved_step_of_a_file_that_is_no_checkpoint_or_no_dict_is_none(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert loading.saved_step(tmp_path / "junk.ckpt") is None
    torch.save([1, 2], tmp_path / "list.ckpt")
    assert loading.saved_step(tmp_path / "list.ckpt") is None


# -- resolve_device ---------------------------------------------------------------------------------------------------


def test_device_auto_is_cuda_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loading.resolve_device("auto") == torch.device("cuda")
    assert loading.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_device_torch_does_not_know_is_refused_with_the_forms_it_takes():
    with pytest.raises(UserError, match=r"^device='gpu0' is not a torch device; use auto, cpu, cuda or cuda:N\.$"):
        loading.resolve_device("gpu0")


# -- check_compatible -------------------------------------------------------------------------------------------------


class _Module(torch.nn.Module):
    def __init__(self, sizes: dict, model: dict):
        super().__init__()
        for name, shape in sizes.items():
            self.register_buffer(name, torch.zeros(shape))
        self.hparams = {"model": model}


def _ckpt(sizes: dict, model: dict) -> dict:
    return {"state_dict": {n: torch.zeros(s) for n, s in sizes.items()}, "hyper_parameters": {"model": model}}


def test_a_checkpoint_that_fits_the_configured_model_passes():
    module = _Module({"w": (2, 3)}, {"latent_dim": 3})
    loading.check_compatible(module, _ckpt({"w": (2, 3)}, {"latent_dim": 3}), "run.ckpt")


def test_a_misshapen_parameter_is_named_with_both_shapes_and_the_settings_that_differ():
    module = _Module({"w": (2, 3)}, {"latent_dim": 3, "hidden_dims": [16]})
    ckpt = _ckpt({"w": (2, 4)}, {"latent_dim": 4, "hidden_dims": [16]})
    with pytest.raises(UserError) as refused:
        loading.check_compatible(module, ckpt, "run.ckpt")
    assert str(refused.value) == (
        "ckpt_path='run.ckpt' does not fit the configured model: parameter w has shape (2, 4) in the checkpoint "
        "and (2, 3) here. Resume with the model settings it was trained with: model.latent_dim=4 (here 3)."
    )


def test_missing_and_unexpected_parameters_are_named_with_the_settings_that_differ():
    module = _Module({"a": 1, "b": 1}, {"hidden_dims": [16, 16]})
    ckpt = _ckpt({"a": 1, "c": 1}, {"hidden_dims": [16], "arch": "mlp"})
    with pytest.raises(UserError) as refused:
        loading.check_compatible(module, ckpt, "run.ckpt")
    assert str(refused.value) == (
        "ckpt_path='run.ckpt' does not fit the configured model: missing b; unexpected c. Resume with the model "
        "settings it was trained with: model.arch=mlp (here None), model.hidden_dims=[16] (here [16,16])."
    )


@pytest.mark.parametrize(
    ("own", "theirs", "said"),
    [({"a": 1, "b": 1}, {"a": 1}, "missing b."), ({"a": 1}, {"a": 1, "c": 1}, "unexpected c.")],
)
def test_only_missing_or_only_unexpected_parameters_name_that_alone(own, theirs, said):
    module = _Module(own, {"k": 1})
    ckpt = _ckpt(theirs, {"k": 1})
    ckpt["hyper_parameters"]["objective"] = {"beta": 1.0}
    with pytest.raises(UserError) as refused:
        loading.check_compatible(module, ckpt, "run.ckpt")
    assert str(refused.value) == (
        f"ckpt_path='run.ckpt' does not fit the configured model: {said} Resume with the model settings it was "
        "trained with (its hyperparameters: {'model': {'k': 1}, 'objective': {'beta': 1.0}})."
    )


def test_at_most_five_missing_or_unexpected_parameters_are_named():
    names = {f"p{i}": 1 for i in range(7)}
    with pytest.raises(UserError) as refused:
        loading.check_compatible(_Module(names, {}), _ckpt({}, {}), "run.ckpt")
    assert "missing p0, p1, p2, p3, p4." in str(refused.value)
    with pytest.raises(UserError) as refused:
        loading.check_compatible(_Module({}, {}), _ckpt(names, {}), "run.ckpt")
    assert "unexpected p0, p1, p2, p3, p4." in str(refused.value)


def test_a_checkpoint_without_model_settings_is_compared_with_the_settings_here():
    ckpt = {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {}}
    with pytest.raises(UserError, match=r"with: model\.latent_dim=None \(here 3\)\.$"):
        loading.check_compatible(_Module({"w": 3}, {"latent_dim": 3}), ckpt, "run.ckpt")


# -- check_same_meaning -----------------------------------------------------------------------------------------------


def _saved(model=None, objective=None, data=None) -> dict:
    return {"hyper_parameters": {"model": model or {}, "objective": objective or {}}, "data_config": data or {}}


def test_a_resume_that_changes_what_the_numbers_mean_names_each_key_with_both_values():
    ckpt = _saved(
        model={"likelihood": "gaussian", "gaussian_std": 0.1},
        objective={"iw_samples": 1},
        data={"binarize": True, "image_size": [8, 8], "val_split": "the last"},
    )
    here = {
        "model": {"likelihood": "gaussian", "gaussian_std": 0.2},
        "objective": {"iw_samples": 5},
        "data": {"binarize": True, "image_size": [28, 28], "val_split": "a random"},
    }
    with pytest.raises(UserError) as refused:
        loading.check_same_meaning(ckpt, here, "r.ckpt")
    assert str(refused.value) == (
        "ckpt_path='r.ckpt' was trained with other settings that change what its numbers mean: "
        "model.gaussian_std=0.2 (trained with 0.1), objective.iw_samples=5 (trained with 1), "
        "data.val_split=a random (trained with the last), data.image_size=[28,28] (trained with [8,8]). "
        "Resume it with the settings it was trained with (leave these "
        "keys out), or train a new run from the start."
    )


@pytest.mark.parametrize("key", loading.MEANING["data"])
def test_every_data_setting_with_meaning_is_compared(key):
    with pytest.raises(UserError, match=f"data.{key}=2 \\(trained with 1\\)"):
        loading.check_same_meaning(_saved(data={key: 1}), {"model": {}, "objective": {}, "data": {key: 2}}, "r")


def test_the_std_of_a_family_without_one_and_keys_either_side_lacks_are_not_compared():
    ckpt = _saved(model={"likelihood": "bernoulli", "gaussian_std": 0.1}, data={"binarize": True})
    here = {"model": {"likelihood": "bernoulli", "gaussian_std": 0.5}, "objective": {"iw_samples": 5}, "data": {}}
    loading.check_same_meaning(ckpt, here, "r.ckpt")
    loading.check_same_meaning(
        {"hyper_parameters": {"model": None}, "data_config": None},
        {"model": {"likelihood": "gaussian", "gaussian_std": 0.5}, "objective": {}, "data": {}},
        "r.ckpt",
    )


def test_the_std_is_compared_for_a_family_with_one_and_for_no_other():
    here = {"model": {"gaussian_std": 0.2}, "objective": {}, "data": {}}
    for likelihood in ("bernoulli", "mystery", None):
        saved = _saved(model={"likelihood": likelihood, "gaussian_std": 0.1})
        loading.check_same_meaning(saved, {**here, "model": {**here["model"], "likelihood": likelihood}}, "r.ckpt")
    for likelihood in ("gaussian", "gaussian_global_var"):
        saved = _saved(model={"likelihood": likelihood, "gaussian_std": 0.1})
        with pytest.raises(UserError, match=r"model.gaussian_std=0.2 \(trained with 0.1\)\."):
            loading.check_same_meaning(saved, {**here, "model": {**here["model"], "likelihood": likelihood}}, "r")


# -- unresumable and saved_datamodule ---------------------------------------------------------------------------------


def test_an_unresumable_state_is_named_with_its_error_on_one_line_or_its_type():
    said = str(loading.unresumable("r.ckpt", RuntimeError("a\n  b")))
    assert said == (
        "ckpt_path='r.ckpt' cannot be resumed: its training state does not load into this run (a b). The file "
        "was altered, or is not a state of this run; resume from another checkpoint of the run (last.ckpt or "
        "interrupted.ckpt), or start a new run. Nothing in the run directory was changed."
    )
    assert "this run (RuntimeError)." in str(loading.unresumable("r.ckpt", RuntimeError()))
    long = str(loading.unresumable("r", RuntimeError("x" * 400)))
    assert "x" * 300 + ")" in long and "x" * 301 not in long


@pytest.mark.parametrize("config", [None, {}])
def test_a_checkpoint_without_a_data_config_has_unknown_data(config):
    with pytest.raises(UserError, match=r"^r\.ckpt holds no data config \(it was not written by vae-train\)"):
        loading.saved_datamodule(config, "r.ckpt")


def test_a_saved_data_config_that_breaks_a_rule_is_named_with_the_file_and_its_key(tmp_path):
    config = {"_target_": "vae_cli.data.Digits", "data_dir": str(tmp_path), "val_size": -3}
    with pytest.raises(UserError, match=r"^r\.ckpt: .*data_config\.val_size"):
        loading.saved_datamodule(config, "r.ckpt")


def test_a_saved_data_config_builds_its_datamodule_set_up_with_the_overrides(tmp_path):
    config = {"_target_": "vae_cli.data.Digits", "data_dir": str(tmp_path / "d")}
    datamodule = loading.saved_datamodule({**config, "val_size": 150, "test_size": 297}, "r.ckpt", batch_size=7)
    assert type(datamodule).__name__ == "Digits" and datamodule.batch_size == 7
    assert len(datamodule.split("test")[0]) == 297


def test_a_saved_data_config_is_held_to_the_rules_the_class_does_not_check_itself():
    config = {"_target_": "vae_cli.data.Digits", "data_dir": "a\0b"}
    with pytest.raises(UserError) as refused:
        loading.saved_datamodule(config, "r.ckpt")
    assert str(refused.value) == (
        "r.ckpt: data_config.data_dir='a\\x00b' is not a valid folder; use a folder's path, e.g. "
        "data_config.data_dir=data."
    )


class TrustedData:
    """A datamodule of the user's own, which a checkpoint may name only when the user trusts it."""

    def __init__(self, size: int, **others):
        self.size = size

    def prepare_data(self):
        pass

    def setup(self):
        pass


def test_a_saved_data_config_names_an_untrusted_class_with_the_file_and_builds_a_trusted_one():
    config = {"_target_": f"{__name__}.TrustedData", "size": 3}
    with pytest.raises(UserError, match=rf"^r\.ckpt: data_config\._target_='{__name__}\.TrustedData' is not a class"):
        loading.saved_datamodule(config, "r.ckpt")
    assert loading.saved_datamodule(config, "r.ckpt", trust=[f"{__name__}.TrustedData"]).size == 3


def test_a_data_error_is_named_with_the_file_unless_it_names_it_already(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").touch()
    config = {"_target_": "vae_cli.data.Digits", "data_dir": "afile/sub"}
    why = (
        "data.data_dir='afile/sub' lies in 'afile', which is a file, not a folder. Point data.data_dir at a folder "
        "(where digits's files are read and its prepared splits kept; it is made if missing), or move the file away."
    )
    with pytest.raises(UserError) as refused:
        loading.saved_datamodule(config, "r.ckpt")
    assert str(refused.value) == f"r.ckpt: its data_config: {why}"
    with pytest.raises(UserError) as refused:
        loading.saved_datamodule(config, "afile")
    assert str(refused.value) == why


# -- load_vae, make_datamodule, build_vae ----------------------------------------------------------------------------

MODEL = {
    "_target_": "vae_cli.core.vae.VAE",
    "latent_dim": 2,
    "hidden_dims": [8],
    "data_shape": [1, 8, 8],
}


def _vae_checkpoint(path: Path, **changes) -> Path:
    from vae_cli.core.vae import VAE

    vae = VAE(**{k: v for k, v in MODEL.items() if k != "_target_"})
    ckpt = {
        "state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()},
        "hyper_parameters": {"model": MODEL},
        "data_config": {"_target_": "vae_cli.data.Digits"},
        "global_step": 0,
    }
    torch.save({**ckpt, **changes}, path)
    return path


def test_load_vae_gives_the_network_in_eval_mode_on_the_device_asked_and_the_data_config(tmp_path):
    path = _vae_checkpoint(tmp_path / "r.ckpt")
    vae, data_config = loading.load_vae(path)
    assert not vae.training and {p.device.type for p in vae.parameters()} == {"cpu"}
    assert data_config == {"_target_": "vae_cli.data.Digits"}
    vae, _ = loading.load_vae(path, map_location="meta")
    assert {p.device.type for p in vae.parameters()} == {"meta"}


def test_load_vae_names_the_file_and_key_of_a_network_it_does_not_build(tmp_path):
    path = _vae_checkpoint(tmp_path / "r.ckpt", hyper_parameters={"model": {**MODEL, "_target_": "os.system"}})
    with pytest.raises(UserError, match=rf"^{path}: hyper_parameters\.model\._target_='os\.system' is not a class"):
        loading.load_vae(path)


def test_load_vae_names_the_file_and_key_of_settings_the_network_does_not_take(tmp_path):
    path = _vae_checkpoint(tmp_path / "r.ckpt", hyper_parameters={"model": {**MODEL, "bogus": 1}})
    with pytest.raises(UserError) as refused:
        loading.load_vae(path)
    assert str(refused.value) == (
        f"{path}: hyper_parameters.model does not describe a VAE (VAE.__init__() got an unexpected keyword "
        "argument 'bogus'); the file is not a vae-cli checkpoint of this version, or was altered."
    )


def test_a_long_weights_error_is_cut_to_300_characters(tmp_path):
    path = _vae_checkpoint(tmp_path / "r.ckpt")
    ckpt = torch.load(path)
    ckpt["state_dict"].update({f"vae.extra{i}": torch.zeros(1) for i in range(100)})
    torch.save(ckpt, path)
    with pytest.raises(UserError) as refused:
        loading.load_vae(path)
    why = str(refused.value).split(" describes (", 1)[1].split("). The file was altered")[0]
    assert len(why) == 300


def test_weights_that_do_not_fit_the_saved_network_are_named_on_one_line(tmp_path):
    path = _vae_checkpoint(tmp_path / "r.ckpt")
    ckpt = torch.load(path)
    ckpt["state_dict"]["vae.extra"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(UserError) as refused:
        loading.load_vae(path)
    said = str(refused.value)
    assert said.startswith(
        f"{path}: state_dict does not fit the network its hyper_parameters.model describes (Error(s) in loading "
        'state_dict for VAE: Unexpected key(s) in state_dict: "extra".)'
    ), said
    assert (
        said.endswith(". The file was altered or is not a vae-cli checkpoint; use another checkpoint of the run.")
        and "\n" not in said
    )


def test_make_datamodule_passes_lists_as_lists_and_the_overrides():
    made = loading.make_datamodule({"_target_": "builtins.dict", "sizes": [1, 2], "a": 1}, a=2)
    assert made == {"sizes": [1, 2], "a": 2} and type(made["sizes"]) is list


def test_build_vae_names_a_refused_setting_with_its_model_key():
    with pytest.raises(UserError, match=r"model\.latent_dim"):
        loading.build_vae({**MODEL, "latent_dim": 0})
    vae = loading.build_vae({**MODEL, "latent_dim": 3})
    assert vae.latent_dim == 3 and vae.data_shape == (1, 8, 8)


def test_a_trusted_class_of_the_users_own_is_held_to_the_rules_of_vae_clis_data_settings():
    config = {"_target_": f"{__name__}.TrustedData", "size": 3, "val_size": -3}
    with pytest.raises(UserError, match=r"^r\.ckpt: data_config\.val_size=-3 "):
        loading.saved_datamodule(config, "r.ckpt", trust=[f"{__name__}.TrustedData"])
