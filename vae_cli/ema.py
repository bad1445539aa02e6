"""An exponential moving average of the weights, theta_ema <- decay * theta_ema + (1 - decay) * theta
after every optimiser step (Polyak averaging with a horizon of about 1 / (1 - decay) steps). It smooths
out the optimiser's noise around the end of training, which is what the test log-likelihood sees.

Validation (so early stopping and best.ckpt), the test after training, vae-eval and vae-sample all use
the average: it is the `state_dict` of every checkpoint. The raw weights travel beside it
(`current_model_state`) so a resumed run continues the same optimisation."""
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .errors import UserError


class EMA(WeightAveraging):
    """Lightning's WeightAveraging with an EMA; off (not added to the trainer) while decay is 0."""

    def __init__(self, decay: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"callbacks.ema.decay={decay} is not in [0, 1). Use e.g. callbacks.ema.decay=0.999 for "
                            "an average over about the last 1,000 steps, or 0 to train without one.")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    @property
    def active(self) -> bool:
        return self.decay > 0

    def on_fit_start(self, trainer, pl_module):
        # Lightning builds the average in setup(), before the module moves to its device; keep the
        # two on one device so each update is a few fused kernels, not a copy across the bus.
        self._average_model.to(pl_module.device)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Lightning would load the raw weights in every stage; only training continues from them.
        # The test after training (and any validate) scores best.ckpt's average, as vae-eval does.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
