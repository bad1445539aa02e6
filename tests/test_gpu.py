"""On a CUDA GPU (skipped where there is none, as in CI): training with the splits held in GPU memory, in
float32 and bf16-mixed, reaches the quality of the same run on the CPU, and vae-eval scores a checkpoint on the
GPU as it does on the CPU."""

import json

import pytest
import torch

from conftest import QUIET, run_tool, run_vae_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


def _train(tmp_path, name: str, *overrides: str) -> dict:
    run_vae_train(
        "trainer.max_epochs=100", "seed=0", f"hydra.run.dir={tmp_path / name}", *QUIET, *overrides, cwd=tmp_path
    )
    return json.loads((tmp_path / name / "metrics.json").read_text())


def _eval(run, device: str, tmp_path) -> dict:
    out = tmp_path / f"eval_{device}.json"
    run_tool("vae-eval", f"ckpt_path={run}", "iw_samples=100", f"device={device}", f"out={out}", cwd=tmp_path)
    return json.loads(out.read_text())


def test_gpu_training_matches_the_cpu_and_so_does_its_evaluation(tmp_path):
    cpu = _train(tmp_path, "cpu", "trainer.accelerator=cpu")
    gpu = _train(tmp_path, "gpu", "trainer.accelerator=gpu")
    bf16 = _train(tmp_path, "bf16", "trainer.accelerator=gpu", "trainer.precision=bf16-mixed")
    assert gpu["global_step"] == cpu["global_step"] == bf16["global_step"]
    # Other random streams on the GPU, so not the same numbers; the same quality (digits, 100 epochs: about -23).
    assert abs(gpu["test/elbo"] - cpu["test/elbo"]) < 1.0, (gpu, cpu)
    assert abs(bf16["test/elbo"] - cpu["test/elbo"]) < 1.5, (bf16, cpu)
    on_cpu, on_gpu = _eval(tmp_path / "gpu", "cpu", tmp_path), _eval(tmp_path / "gpu", "cuda", tmp_path)
    # The analytic KL does not depend on the samples; the importance-weighted NLL does, a little.
    assert on_gpu["kl"] == pytest.approx(on_cpu["kl"], rel=1e-4)
    assert abs(on_gpu["nll_iw"] - on_cpu["nll_iw"]) < 0.1, (on_gpu, on_cpu)
