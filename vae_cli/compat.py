"""Every private name of another library that vae-cli uses (Lightning's, torch's, and those of the TensorBoard, MLflow
and W&B loggers), each behind a function named for what it does: the rest of the package uses public names only, and
tests/test_compat.py pins each one, so a release that changes one fails its test rather than a run. No library is
imported at the top: a command that never trains (vae-eval, vae-sample, vae-report, a refused vae-train) loads none
through this module."""

import traceback


def attached_trainer(module):
    """The Trainer a LightningModule is attached to, or None when there is none (a checkpoint loaded outside
    training); Lightning's public `trainer` raises instead."""
    return module._trainer


def average_model(callback):
    """The AveragedModel of Lightning's WeightAveraging callback (None before its setup). Lightning builds it in
    setup(), before the module moves to its device, and offers no other way to move it."""
    return callback._average_model


def divide_by_norms(tensors: list, eps: float) -> None:
    """Each tensor divided in place by its own L2 norm + eps, in a few fused kernels over the whole list (the
    foreach kernels torch's own optimisers use, which torch does not expose publicly)."""
    import torch

    norms = torch._foreach_norm(tensors)
    torch._foreach_add_(norms, eps)
    torch._foreach_div_(tensors, norms)


def event_file_writer(experiment):
    """The event-file writer of a torch SummaryWriter (made again if it was closed), which takes a summary as it is
    (the HPARAMS session's, as Lightning's TensorBoardLogger writes it); None from the stand-in Lightning gives the
    processes after the first, which write nothing."""
    return experiment._get_file_writer()


def mlflow_run_started(logger) -> bool:
    """Whether Lightning's MLFlowLogger has started (or found) its MLflow run: before that, logging to it would
    start one."""
    return logger._initialized


def log_checkpoint_files(logger, checkpoint_callback) -> None:
    """Lightning's MLFlowLogger logging the files of one checkpoint callback as artifacts, each file once (it
    remembers what it has logged): what it does itself only for the callback that saved last."""
    logger._scan_and_log_checkpoints(checkpoint_callback)


def wandb_init_arguments(logger) -> dict:
    """The keyword arguments Lightning's WandbLogger hands to wandb.init when it starts its run: its own dict, so what
    is changed in it before then is what wandb.init gets."""
    return logger._wandb_init


# Where Lightning puts a checkpoint's state back: the hooks it calls on the module, the optimisers and the callbacks,
# and the methods of its checkpoint connector (in checkpoint_connector.py) that call them.
RESTORE_FRAMES = ("on_load_checkpoint", "load_state_dict", "_restore_modules_and_callbacks", "restore_training_state")
RESTORE_FILE = "checkpoint_connector.py"


def raised_restoring(error: BaseException) -> bool:
    """Whether an error was raised while Lightning put a checkpoint's state back into the trainer, the module, the
    optimisers or the callbacks (a state the run cannot take), as its traceback's frames tell."""
    return any(
        f.name in RESTORE_FRAMES or f.filename.endswith(RESTORE_FILE) for f in traceback.extract_tb(error.__traceback__)
    )
