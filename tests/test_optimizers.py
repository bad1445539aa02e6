"""The optimizer and its learning-rate schedule come from their config groups (optimizer=adam|adamw|sgd, any
torch.optim class by its _target_; scheduler=none|exponential|cosine|plateau): the learning rates a run logs follow
each schedule's closed form, and settings a class refuses stop the run naming the keys."""

import math

import pytest
import torch

from vae_cli.cli.checks import optimizer_and_schedule

from conftest import QUIET, SMALL_NET, compose, read_scalars, refused, train


def _built(*overrides):
    make_optimizer, make_schedule = optimizer_and_schedule(compose("train", *overrides))
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    return optimizer, make_schedule(optimizer) if make_schedule else None


def test_the_default_is_todays_fused_adam_at_optim_lr_with_a_constant_rate():
    optimizer, schedule = _built("optim.lr=0.002")
    assert type(optimizer) is torch.optim.Adam and schedule is None
    assert optimizer.defaults["lr"] == 0.002 and optimizer.defaults["fused"] is True


@pytest.mark.parametrize(
    "overrides, cls, settings",
    [
        (["optimizer=adamw"], torch.optim.AdamW, {"weight_decay": 0.01, "lr": 1e-3}),
        (["optimizer=sgd", "optim.lr=0.05"], torch.optim.SGD, {"momentum": 0.9, "lr": 0.05}),
        (["optimizer._target_=torch.optim.NAdam", "~optimizer.fused"], torch.optim.NAdam, {"lr": 1e-3}),
        (["optimizer=adamw", "optimizer.weight_decay=0.1"], torch.optim.AdamW, {"weight_decay": 0.1}),
    ],
)
def test_any_torch_optimizer_from_its_group_or_target(overrides, cls, settings):
    optimizer, _ = _built(*overrides)
    assert type(optimizer) is cls and settings.items() <= optimizer.defaults.items()


@pytest.mark.parametrize(
    "overrides, cls",
    [
        (["scheduler=exponential", "optim.lr_decay=0.9"], torch.optim.lr_scheduler.ExponentialLR),
        (["optim.lr_decay=0.9"], torch.optim.lr_scheduler.ExponentialLR),  # the name from before the groups
        (["scheduler=cosine"], torch.optim.lr_scheduler.CosineAnnealingLR),
        (["scheduler=plateau"], torch.optim.lr_scheduler.ReduceLROnPlateau),
    ],
)
def test_each_schedule_from_its_group(overrides, cls):
    _, schedule = _built(*overrides)
    assert type(schedule) is cls


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (["optim.lr_decay=0.5"], lambda e: 1e-3 * 0.5**e),
        (["scheduler=cosine"], lambda e: 1e-3 * (1 + math.cos(math.pi * e / 3)) / 2),  # eta_min 0, T_max 3 epochs
    ],
)
def test_a_run_logs_the_learning_rate_its_schedule_gives_each_epoch(tmp_path, schedule, expected):
    run = train(tmp_path, "run", *SMALL_NET, "trainer.max_epochs=3", "optimizer=adamw", *schedule)
    logged = sorted(read_scalars(run)["lr-AdamW"])
    assert [step for step, _ in logged] == [0, 11, 22]  # once per epoch, 11 steps each
    assert [lr for _, lr in logged] == pytest.approx([expected(e) for e in range(3)], rel=1e-6)


def test_settings_the_optimizer_refuses_stop_the_run_naming_them(tmp_path, capsys):
    err = refused(
        "vae-train",
        *SMALL_NET,
        *QUIET,
        "optimizer._target_=torch.optim.NAdam",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert (
        "optimizer._target_='torch.optim.NAdam' refused its settings (optimizer.fused=True): "
        "NAdam.__init__() got an unexpected keyword argument 'fused'"
    ) in err
    assert not (tmp_path / "r" / "checkpoints").exists()
    err = refused(
        "vae-train",
        *SMALL_NET,
        *QUIET,
        "scheduler=cosine",
        "+scheduler.warmup=5",
        f"hydra.run.dir={tmp_path / 'r2'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert (
        "scheduler._target_='torch.optim.lr_scheduler.CosineAnnealingLR' refused its settings (scheduler.warmup=5)"
        in err
    )


def test_an_optimizer_argument_given_as_a_list_reaches_it_as_a_list(tmp_path):
    # A config list would ride in the optimiser's state into every checkpoint, which then loads only with code
    # running (weights_only refuses OmegaConf's ListConfig): the final test could not load best.ckpt.
    run = train(tmp_path, "run", *SMALL_NET, "trainer.max_epochs=1", "+optimizer.betas=[0.8,0.9]")
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert tuple(ckpt["optimizer_states"][0]["param_groups"][0]["betas"]) == (0.8, 0.9)
    assert (run / "metrics.json").is_file()  # the final test loaded best.ckpt
