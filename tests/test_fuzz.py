"""The fuzzer: generated hostile settings and files against the contract of every command (tests/fuzz.py says
what it is). In this process, fast: any value of any key of the composed config is judged by the settings' rules
or built (data, model, objective, optimiser, callbacks, loggers, trainer) without an error other than the user's,
which names the key; a checkpoint with any field removed, retyped or naming a callable is scored, sampled or
refused in one line, and runs nothing. Marked slow: hostile states to resume from, and real vae-train processes."""

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vae_cli.errors import UserError

import fuzz
from conftest import QUIET, compose, run_here, run_vae_train

# The configs whose keys are attacked: the default, and one with every optional callback and a schedule chosen.
VARIANTS = [(), ("callbacks=[default,ema,early_stopping]", "scheduler=plateau", "logger=[tensorboard,csv]")]
GROUPS = ["data", "model", "objective", "optimizer", "scheduler", "trainer", "logger", "callbacks", "top"]
PATHS = {"run_dir", "trainer.default_root_dir"}  # where the run writes: the directory under test itself


def _keys(variant, group: str) -> list[str]:
    keys = [k for k in fuzz.leaves(compose("train", *variant)) if k not in PATHS]
    return [k for k in keys if (k.split(".")[0] == group) or (group == "top" and k.split(".")[0] not in GROUPS)]


def _named(message: str, key: str) -> bool:
    """Whether a refusal names the key: the key itself, or (for a value Hydra or OmegaConf refuses) its path."""
    return key in message or key.rpartition(".")[2] in message and key.partition(".")[0] in message


def judged_and_built(cfg) -> None:
    """What vae-train does before training: the settings' rules, then every object built."""
    from vae_cli.cli.build import build
    from vae_cli.cli.checks import check_train_config

    check_train_config(cfg)
    build(cfg)


@pytest.mark.parametrize("group", GROUPS)
def test_any_value_of_any_setting_is_refused_by_name_or_built(group, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = {v: compose("train", f"run_dir={tmp_path / 'run'}", *v) for v in VARIANTS}
    keys = [(v, k) for v in VARIANTS for k in _keys(v, group)]

    @settings(
        max_examples=fuzz.examples(12),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(keys), fuzz.VALUES)
    def attack(variant_key, value):
        variant, key = variant_key
        cfg = fuzz.with_value(configs[variant], key, value)
        assume(cfg is not None)
        try:
            judged_and_built(cfg)
        except UserError as e:
            assert _named(str(e), key), f"{key}={value!r} refused without naming the key: {e}"

    attack()


def _checkpoint(tmp_path: Path) -> Path:
    from test_trust import _digits_checkpoint

    return _digits_checkpoint(tmp_path / "c.ckpt")


WRITERS = [
    "pathlib.Path.write_text",
    "builtins.open",
    "shutil.copyfile",
    "shutil.rmtree",
    "os.remove",
    "torch.save",
    "numpy.save",
    "subprocess.run",
    "builtins.exec",
    "vae_cli.writers.files.write_json",
]
FIELDS = ["state_dict", "hyper_parameters", "data_config", "global_step", "epoch"]


def _hostile_checkpoints() -> dict:
    """Changes to a checkpoint's content, by kind: a field removed, a field or a saved setting retyped, or a saved
    config naming a callable."""
    fields = FIELDS + ["hyper_parameters.model", "state_dict.one"]
    removed = st.tuples(st.just("remove"), st.sampled_from(fields))
    values = st.one_of(fuzz.VALUES, st.just(torch.zeros(3)), st.just(torch.zeros(2, 2, dtype=torch.int8)))
    settings_ = [
        *(
            f"hyper_parameters.model.{k}"
            for k in ("latent_dim", "hidden_dims", "arch", "likelihood", "data_shape", "activation")
        ),
        *(f"data_config.{k}" for k in ("val_size", "test_size", "binarize", "data_dir", "batch_size")),
    ]
    retyped_field = st.tuples(st.just("retype"), st.sampled_from(fields), values)
    retyped_setting = st.tuples(st.just("retype"), st.sampled_from(settings_), values)
    called = st.tuples(
        st.just("call"),
        st.sampled_from(
            ["hyper_parameters.model", "data_config", "hyper_parameters.model.hidden_dims", "data_config.val_size"]
        ),
        st.sampled_from(WRITERS),
    )
    return {"removed": removed, "retyped-field": retyped_field, "retyped-setting": retyped_setting, "called": called}


# Examples per kind, 25 a command in all as when the kinds were drawn together (removed: each of its 7 fields once),
# in a test per kind and command, each a few seconds at most.
HOSTILE = _hostile_checkpoints()
HOSTILE_EXAMPLES = {"removed": 7, "retyped-field": 5, "retyped-setting": 5, "called": 8}


def _apply(ckpt: dict, change, victim: Path) -> dict:
    kind, where, *value = change
    *path, last = where.split(".")
    node = ckpt
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return ckpt
    if last == "one":  # one of the state dict's tensors
        last = sorted(node)[0]
    if kind == "remove":
        node.pop(last, None)
    elif kind == "retype":
        node[last] = value[0]
    else:
        node[last] = {
            "_target_": value[0],
            "self": str(victim),
            "file": str(victim),
            "path": str(victim),
            "data": "overwritten",
            "f": str(victim),
            "obj": 1,
            "arr": [1],
            "args": ["touch", str(victim)],
        }
    return ckpt


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("tool", ["vae-eval", "vae-sample"])
def test_a_hostile_checkpoint_is_scored_or_refused_in_one_line_and_runs_nothing(
    tool, kind, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # what users see: the command's own boundary
    victim = tmp_path / "victim.txt"
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "kept.txt").write_text("kept")
    pristine = torch.load(_checkpoint(tmp_path), weights_only=True)

    @settings(
        max_examples=fuzz.examples(HOSTILE_EXAMPLES[kind]),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(HOSTILE[kind])
    def attack(change):
        ckpt = _apply(copy.deepcopy(pristine), change, victim)
        path = tmp_path / "hostile.ckpt"
        torch.save(ckpt, path)
        before = fuzz.snapshot(sentinel)
        args = (
            ["iw_samples=2", "limit=3", "figures=false", f"out={tmp_path / 'out' / 'e.json'}"]
            if tool == "vae-eval"
            else ["n=2", "steps=2", f"out={tmp_path / 'out'}"]
        )
        code = 0
        try:
            run_here(tool, f"ckpt_path={path}", *args, cwd=tmp_path)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2), f"{change}: exit {code}: {err}"
        assert "Traceback" not in err
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and str(path) in err, f"{change}: {err}"
        assert not victim.exists(), f"{change} wrote {victim}"
        assert fuzz.snapshot(sentinel) == before

    attack()


YAML_TEXTS = st.one_of(
    st.sampled_from(
        [
            "model:\n  latent_dim: 3\n  latent_dim: 4\n",  # a duplicate key
            "model:\n\tlatent_dim: 3\n",  # a tab
            "a: &x [1, 2]\nmodel:\n  hidden_dims: *x\n",  # an alias
            "model: !!python/object/apply:os.system ['touch victim']\n",  # a tag that would run a program
            "model: [1, 2\n",  # unclosed
            "\x00\x01binary",
            "# @package _global_\nmodel:\n  latent_dim: -2\n",
            "# @package _global_\nhydra:\n  run:\n    dir: /\n",
            "defaults:\n  - nope\n",
            "x: " + "[" * 200 + "]" * 200 + "\n",
        ]
    ),
    st.text(max_size=200),
)


def test_a_hostile_yaml_of_the_users_own_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)

    @settings(
        max_examples=fuzz.examples(20),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(YAML_TEXTS)
    def attack(text):
        folder = tmp_path / "mine" / "experiment"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "x.yaml").write_text(text, errors="surrogatepass") if "\x00" not in text else (
            folder / "x.yaml"
        ).write_bytes(text.encode("utf-8", "surrogatepass"))
        code = 0
        try:
            run_here("vae-train", "--config-dir", str(tmp_path / "mine"), "experiment=x", "--cfg", "job", cwd=tmp_path)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2, None), err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
        assert not (tmp_path / "victim").exists()

    attack()


# Marked slow: the same attacks carried through training, and real processes.
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.latent_projector.max_points=20",
]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A run of two steps, whose checkpoints the resume attacks start from."""
    from conftest import train

    return train(tmp_path_factory.mktemp("fuzz"), "run", *SHORT)


LIGHTNING_FIELDS = [
    "loops",
    "optimizer_states",
    "lr_schedulers",
    "callbacks",
    "pytorch-lightning_version",
    "hparams_name",
    "train_epoch_sums",
    "state_dict.one",
]


@pytest.mark.slow
def test_a_hostile_state_to_resume_from_resumes_or_is_refused_and_rewrites_nothing(
    short_run, tmp_path, capsys, monkeypatch
):
    import shutil

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    changes = st.one_of(
        st.tuples(st.just("remove"), st.sampled_from(FIELDS + LIGHTNING_FIELDS)),
        st.tuples(
            st.just("retype"),
            st.sampled_from(
                FIELDS
                + LIGHTNING_FIELDS
                + ["hyper_parameters.model.latent_dim", "hyper_parameters.objective", "data_config.val_size"]
            ),
            st.one_of(fuzz.VALUES, st.just(torch.zeros(3))),
        ),
        st.tuples(
            st.just("call"), st.sampled_from(["hyper_parameters.model", "data_config"]), st.sampled_from(WRITERS)
        ),
    )

    @settings(
        max_examples=fuzz.examples(12),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(changes)
    def attack(change):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(short_run, run)
        victim = tmp_path / "victim.txt"
        ckpt = _apply(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True), change, victim)
        torch.save(ckpt, run / "checkpoints" / "last.ckpt")
        before = fuzz.snapshot(run)
        code = 0
        try:
            run_here("vae-train", f"ckpt_path={run}", "trainer.max_epochs=2", *SHORT[1:], *QUIET, cwd=tmp_path)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2), f"{change}: exit {code}: {err}"
        assert "Traceback" not in err and not victim.exists()
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and str(run) in err, f"{change}: {err}"
            assert fuzz.rewritten(before, fuzz.snapshot(run)) == [], f"{change} rewrote files of the run"

    attack()


def _sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A working directory for a command, and a sentinel tree beside it that no command may touch."""
    work, sentinel = tmp_path / "work", tmp_path / "sentinel"
    for d in (work, sentinel / "deep"):
        d.mkdir(parents=True, exist_ok=True)
    (sentinel / "deep" / "kept.txt").write_text("kept")
    return work, sentinel


@pytest.mark.slow
def test_any_setting_on_the_command_line_keeps_the_process_contract(tmp_path):
    """Real vae-train processes, as users start them, with one hostile override each."""
    work, sentinel = _sandbox(tmp_path)
    keys = [k for v in VARIANTS[:1] for group in GROUPS for k in _keys(v, group)]

    @settings(
        max_examples=fuzz.examples(16),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(keys), fuzz.VALUES)
    def attack(key, value):
        assume("\x00" not in fuzz.override(key, value))  # no command line can hold one
        before = fuzz.snapshot(sentinel)
        proc = run_vae_train(fuzz.override(key, value), *SHORT, *QUIET, cwd=work, check=False, timeout=600)
        assert proc.returncode in (0, 2), f"{key}={value!r}: exit {proc.returncode}: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        if proc.returncode == 2:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("vae-train: error:")]
            assert len(errors) == 1, proc.stderr
            assert _named(errors[0], key) or "override" in errors[0].lower(), errors[0]
        assert fuzz.snapshot(sentinel) == before

    attack()


# A sweep's records as vae-train writes them, for vae-report to read: every file a job leaves, and the search's.
RECORDS = {
    "0/.hydra/overrides.yaml": "- model.latent_dim=2\n- seed=0\n",
    "0/.hydra/provenance.yaml": "vae_cli:\n  version: 0.1.0\nversions:\n  torch: 2.14.1\nmachine:\n  host: h\n",
    "0/metrics.json": '{"test/elbo": -100.5, "test/kl": 3.25, "best_checkpoint": "checkpoints/best.ckpt"}',
    "0/timing.json": '{"train_seconds": 12.5}',
    "0/eval_test_k100.json": '{"nll_iw": 98.5, "iw_samples": 100}',
    "1/.hydra/overrides.yaml": "- model.latent_dim=8\n- seed=0\n",
    "1/error.json": '{"type": "vae_cli.errors.UserError", "message": "data.val_size=0 is not valid"}',
    "2/.hydra/overrides.yaml": "- model.latent_dim=2\n- seed=1\n",
    "2/interrupted.json": '{"signal": "SIGUSR1", "stopped": "in epoch 3", "epoch": 3, "global_step": 40, '
    '"checkpoint": "checkpoints/interrupted.ckpt", "resume": "vae-train ...", "requeued": false}',
    "3/.hydra/overrides.yaml": "- model.latent_dim=8\n- seed=1\n",
    "3/pruned.json": '{"epoch": 2, "monitor": "val/elbo", "value": -120.25}',
    "3/train.log": "[2026-11-25 16:03:10,437][vae_cli][ERROR] - boom\n",
    "optimization_results.yaml": "name: optuna\nbest_params:\n  model.latent_dim: 8\nbest_value: -99.5\n",
}
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def _hostile_record(draw, name: str) -> tuple[str, object]:
    """What a record may be instead of itself: other bytes, other JSON or YAML, the record with a field
    removed or retyped, or no regular file at all."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "drop", "folder", "fifo", "device", "loop", "huge"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=120))
    if kind == "json":
        return kind, json.dumps(draw(JSON_VALUES))
    valid = RECORDS[name]
    if kind in ("field", "drop") and name.endswith(".json"):
        content = json.loads(valid)
        key = draw(st.sampled_from(sorted(content)))
        if kind == "drop":
            del content[key]
        else:
            content[key] = draw(JSON_VALUES)
        return kind, json.dumps(content)
    if kind in ("field", "drop"):  # a YAML record: a line removed, or one replaced by any text
        lines = valid.splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        lines[i : i + 1] = [] if kind == "drop" else [draw(st.text(max_size=40))]
        return kind, "\n".join(lines)
    return kind, None


def _write_hostile(path: Path, kind: str, content) -> None:
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # read without a writer, it would block forever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate((1 << 24) + 1)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, errors="surrogatepass")


def test_a_hostile_sweep_record_is_reported_or_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    from vae_cli.cli import report

    @settings(
        max_examples=fuzz.examples(25),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def attack(data):
        name = data.draw(st.sampled_from(sorted(RECORDS)))
        kind, content = data.draw(_hostile_record(name))
        sweep = tmp_path / "sweep"
        shutil.rmtree(sweep, ignore_errors=True)
        for file, text in RECORDS.items():
            (sweep / file).parent.mkdir(parents=True, exist_ok=True)
            (sweep / file).write_text(text)
        victim = tmp_path / "victim"
        victim.write_text("kept")
        (sweep / "report.csv").symlink_to(victim)  # a report is written beside the link, never through it
        _write_hostile(sweep / name, kind, content)
        code = 0
        with warnings.catch_warnings(record=True) as raw:  # a library's warning is one a user cannot act on
            warnings.simplefilter("always")
            try:
                report.main([str(sweep), "--figures" if data.draw(st.booleans()) else "--no-figures"])
            except SystemExit as e:
                code = e.code
        assert not raw, (name, kind, [str(w.message) for w in raw])
        out, err = capsys.readouterr()
        assert code in (0, 2, None), (name, kind, err)
        assert "Traceback" not in out + err, (name, kind, err)
        assert code == 0 or len(err.strip().splitlines()) == 1, (name, kind, err)
        assert victim.read_text() == "kept"
        if code == 0:  # every job is in the table, whatever its records
            assert all(f"| {n} " in (sweep / "report.md").read_text() for n in range(4)), (name, kind, out)

    attack()


def test_a_hostile_cache_or_per_image_file_is_prepared_again_or_refused_in_one_line(tmp_path):
    from vae_cli.cli.evaluate import read_per_example
    from vae_cli.data import Digits

    dm = Digits(data_dir=str(tmp_path / "data"), binarize=False)
    dm.prepare_data()
    dm.setup()
    kept = next((tmp_path / "data").rglob("*.pt"))
    good = kept.read_bytes()
    per_image = tmp_path / "eval_test_k5_best.pt"
    torch.save({"log_px": torch.zeros(3), "elbo": torch.zeros(3), "images_sha256": "ab"}, per_image)

    @settings(
        max_examples=fuzz.examples(25),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(["bytes", "tensors", "cut", "folder", "fifo", "device", "loop"]), st.data())
    def attack(kind, data):
        value = None
        for f in (kept, per_image):
            if f.is_dir():
                f.rmdir()
            elif f.exists() or f.is_symlink():
                f.unlink()
        contents = {"bytes": data.draw(st.binary(max_size=200)), "cut": good[: data.draw(st.integers(0, len(good)))]}
        if kind == "tensors":  # a torch file of other tensors and plain data
            value = data.draw(
                st.recursive(
                    st.one_of(st.integers(), st.text(max_size=5), st.just(torch.ones(2))),
                    lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6,
                )
            )
            for f in (kept, per_image):
                torch.save(value, f)
        else:
            for f in (kept, per_image):
                f.write_bytes(b"")
                _write_hostile(f, kind, contents.get(kind, b""))
        again = Digits(data_dir=str(tmp_path / "data"), binarize=False)
        again.setup()  # a cache that is not what its name claims is prepared again, never trusted
        assert len(again.eval_batches("test")) > 0
        whole = kind == "tensors" and isinstance(value, dict) and {"log_px", "elbo", "images_sha256"} <= value.keys()
        if not whole:
            with pytest.raises(UserError, match="compare_to=") as e:
                read_per_example(str(per_image), "test", 5)
            assert "\n" not in str(e.value)
        for f in (kept, per_image):  # the next example starts from files that are whole again
            if f.is_dir():
                f.rmdir()
            elif f.exists() or f.is_symlink():
                f.unlink()
        kept.write_bytes(good)

    attack()


@pytest.mark.parametrize("tool", ["train", "eval", "sample"])
def test_a_value_refused_before_the_config_is_composed_is_refused_alike_after(tool):
    """The command line's values are judged before Hydra composes the config (startup.py), for speed: never a
    refusal the composed config's check would not make, and the same message."""
    from vae_cli.cli import checks
    from vae_cli.cli.startup import check_command_line_values

    rules = {"train": checks.TRAIN_RULES, "eval": checks.EVAL_RULES, "sample": checks.SAMPLE_RULES}[tool]
    base = [] if tool == "train" else ["ckpt_path=run"]  # the one key they need set
    keys = [k for k in fuzz.leaves(compose(tool, *base)) if k not in PATHS and k != "ckpt_path"]

    def verdict(check, *args) -> str | None:
        try:
            check(*args)
        except UserError as e:
            return str(e)
        return None

    def composed_check(cfg):
        if tool == "train":
            checks.check_train_config(cfg)
        else:
            checks.check_values(cfg, rules)

    @settings(
        max_examples=fuzz.examples(10),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.sampled_from(keys), fuzz.VALUES)
    def attack(key, value):
        line = fuzz.override(key, value)
        early = verdict(check_command_line_values, [line], rules)
        try:
            cfg = compose(tool, *base, line)
        except Exception:  # noqa: BLE001 (Hydra refuses the command line itself: any refusal before it is as good)
            return
        assert early is None or verdict(composed_check, cfg) == early, (line, early)

    attack()
