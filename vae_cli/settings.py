"""Every setting vae-cli accepts and the rule it must meet, in one place, without torch: the commands check a
composed config here before anything heavy is imported (a mistyped value is refused in the time Python and Hydra
take), and the classes the settings build (the VAE, the objective, the datamodules) check their arguments with the
same rules when they are built from Python.

A rule refuses with BadArgument, whose message names the argument as {name}: the class's caller sees the argument's
name, the command the config key (model.latent_dim). What only the data can tell (a split larger than the dataset)
is checked where the data is read."""

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BadArgument, integer, number, one_of, require


def finite(v) -> bool:
    return number(v) and math.isfinite(v)


# The networks (core/nets.py builds them by these names).
ARCHS = ("mlp", "conv")
ACTIVATIONS = ("relu", "tanh", "elu", "gelu", "silu")
GATED = "gated"  # the MLPs' gated linear layers, in place of an activation


@dataclass(frozen=True)
class Family:
    """A likelihood family's traits (core/likelihoods.py implements it under the same name). support: the data it
    is a distribution of: "binary" ({0, 1}; chosen, the data is binarised), "unit" ([0, 1]), "8bit" (k/255) or "real".
    std_floor: None when the family has no std option, else the bound the starting std (model.gaussian_std) must
    exceed. params_per_dim: decoder outputs per data dimension."""

    support: str = "real"
    std_floor: float | None = None
    params_per_dim: int = 1


# Floor of the learned Gaussian std: about the std of 8-bit rounding noise, 1/(255 sqrt 12), below which sigma would
# model the rounding (a continuous density on quantised data grows without bound as sigma -> 0).
STD_MIN = 1e-3
FAMILIES = {
    "bernoulli": Family(support="binary"),
    "gaussian": Family(std_floor=0.0),
    "gaussian_global_var": Family(std_floor=STD_MIN),
    "gaussian_pixel_var": Family(params_per_dim=2),
    "continuous_bernoulli": Family(support="unit"),
    "discretized_logistic": Family(support="8bit", params_per_dim=2),
}


# The families of q(z|x) and p(z) (core/families.py builds them by these names): each one's settings, with the rule
# of each (what it is, what to use) and its default.
POSTERIORS = {
    "diagonal": {},
    "full": {},
    "iaf": {
        "n_steps": (lambda v: integer(v, 1), "number of flow steps", "an integer >= 1, e.g. 2", 2),
        "hidden_dims": (
            lambda v: isinstance(v, (list, tuple)) and all(integer(h, 1) for h in v),
            "list of layer widths",
            "zero or more integers >= 1, e.g. [128]",
            [128],
        ),
    },
}
PRIORS = {
    "standard": {},
    "mog": {"n_components": (lambda v: integer(v, 1), "number of components", "an integer >= 1, e.g. 10", 10)},
    "vamp": {"n_components": (lambda v: integer(v, 1), "number of pseudo-inputs", "an integer >= 1, e.g. 500", 500)},
}


def _check_family(name: str, spec, families: dict, default: str) -> str:
    """The family a posterior or prior setting names (a dict {family: ..., settings}, a name, or None: `default`),
    each of its settings checked; refused as {name}.<key>."""
    if spec is None:
        return default
    if isinstance(spec, str):
        spec = {"family": spec}
    if not isinstance(spec, dict):
        raise BadArgument(
            f"{{{name}}}={spec!r} is not a valid {name} family; use one of {', '.join(families)}, "
            f"e.g. {name}={next(iter(families))} on the command line."
        )
    family = spec.get("family", default)
    if not one_of(family, families):
        raise BadArgument(
            f"{{{name}}}.family={family!r} is not a valid {name} family; use one of {', '.join(families)}."
        )
    rules = families[family]
    for key, value in spec.items():
        if key == "family":
            continue
        if key not in rules:
            known = ", ".join(["family", *rules])
            raise BadArgument(f"{{{name}}}.{key} is not a setting of the {family} {name}; its settings are {known}.")
        ok, what, use, _ = rules[key]
        if not ok(value):
            raise BadArgument(f"{{{name}}}.{key}={value!r} is not a valid {what}; use {use}.")
    return family


def family_of(spec, default: str) -> str:
    """The family's name a (checked) posterior or prior setting names."""
    if spec is None:
        return default
    return spec if isinstance(spec, str) else spec.get("family", default)


def kl_estimate(posterior: str, prior: str) -> str:
    """Which estimate of KL(q(z|x) || p(z)) the logged kl is for these families: "analytic" (closed form: a Gaussian
    q against N(0, I)) or "mc" (log q(z|x) - log p(z) at the ELBO's sample z; no closed form exists)."""
    return "analytic" if posterior in ("diagonal", "full") and prior == "standard" else "mc"


def check_families(*, posterior=None, prior=None, free_bits=0.0, kl_estimator="analytic") -> None:
    """Refuse an objective the families' math does not allow: free bits needs the KL per latent dimension in
    closed form (a diagonal q against N(0, I)). Names the keys as {posterior}, {prior}, {free_bits}."""
    q, p = family_of(posterior, "diagonal"), family_of(prior, "standard")
    if free_bits > 0 and (q, p) != ("diagonal", "standard"):
        raise BadArgument(
            f"{{free_bits}}={free_bits} floors the KL of each latent dimension, which only "
            f"{{posterior}}.family=diagonal with {{prior}}.family=standard has (here {{posterior}}.family="
            f"{q} and {{prior}}.family={p}: the KL is not a sum over dimensions). Set {{free_bits}}=0, "
            "or use posterior=diagonal prior=standard."
        )


def check_model(
    *,
    latent_dim=16,
    hidden_dims=(512, 256),
    arch="mlp",
    activation="relu",
    likelihood="bernoulli",
    gaussian_std=0.1,
    logvar_range=None,
    init_output_bias=False,
    posterior=None,
    prior=None,
) -> None:
    """Refuse settings a VAE cannot be built from, before the data's shape is known."""
    require("latent_dim", latent_dim, integer(latent_dim, 1), "latent dimension K", "an integer >= 1, e.g. 16")
    require("arch", arch, one_of(arch, ARCHS), "architecture", f"one of {', '.join(ARCHS)}")
    require(
        "hidden_dims",
        hidden_dims,
        isinstance(hidden_dims, (list, tuple)) and len(hidden_dims) > 0 and all(integer(h, 1) for h in hidden_dims),
        "list of layer widths",
        "one or more integers >= 1, e.g. [512,256]",
    )
    if activation == GATED and arch != "mlp":
        raise BadArgument(
            f"{{activation}}={GATED} is a layer of the MLP; with {{arch}}={arch} use one of {', '.join(ACTIVATIONS)}."
        )
    require(
        "activation",
        activation,
        one_of(activation, [*ACTIVATIONS, GATED]),
        "activation",
        f"one of {', '.join(ACTIVATIONS)}, or {GATED} for an MLP",
    )
    require("likelihood", likelihood, one_of(likelihood, FAMILIES), "likelihood", f"one of {', '.join(FAMILIES)}")
    check_std(likelihood, gaussian_std)
    range_ok = isinstance(logvar_range, (list, tuple)) and len(logvar_range) == 2 and all(map(finite, logvar_range))
    require(
        "logvar_range",
        logvar_range,
        logvar_range is None or range_ok and logvar_range[0] < logvar_range[1],
        "range",
        "null, or [lo, hi] with lo < hi, e.g. [-6,2]",
    )
    require("init_output_bias", init_output_bias, isinstance(init_output_bias, bool), "switch", "true or false")
    _check_family("posterior", posterior, POSTERIORS, "diagonal")
    _check_family("prior", prior, PRIORS, "standard")


def check_std(likelihood: str, gaussian_std) -> None:
    """The std a family with a std option starts from must lie above its floor (ignored by the others)."""
    floor = FAMILIES[likelihood].std_floor
    if floor is not None and not (finite(gaussian_std) and gaussian_std > floor):
        bound = "a positive number" if floor == 0 else f"a number above {floor:g} (the smallest std it can learn)"
        raise BadArgument(
            f"{{gaussian_std}}={gaussian_std!r} is not a valid standard deviation for "
            f"{{likelihood}}={likelihood}; use {bound}, e.g. 0.1."
        )


def _halvings(size, n: int) -> list[tuple[int, ...]]:
    """Spatial sizes after each of n stride-2 convolutions (kernel 3, padding 1): ceil(s / 2)."""
    sizes = [tuple(size)]
    for _ in range(n):
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    return sizes


def _family_settings(spec, families: dict, default: str) -> tuple[str, dict]:
    """(family, its settings with the defaults filled in) of a posterior or prior setting (check_model's forms)."""
    spec = {"family": default} if spec is None else {"family": spec} if isinstance(spec, str) else dict(spec)
    family = spec.pop("family", default)
    return family, {**{k: rule[3] for k, rule in families[family].items()}, **spec}


def n_parameters(
    data_shape, latent_dim: int, hidden_dims, arch: str, activation: str, likelihood: str, posterior=None, prior=None
) -> int:
    """The number of parameters of the encoder and decoder these settings build (core/nets.py) and of the posterior
    and prior families (core/families.py): the full covariance's K(K-1)/2 more encoder outputs, the IAF's MADE
    layers, the mixture's weights, means and log-variances, the VampPrior's pseudo-inputs; without building them."""
    k = latent_dim
    q_family, q = _family_settings(posterior, POSTERIORS, "diagonal")
    p_family, p = _family_settings(prior, PRIORS, "standard")
    extra = k * (k - 1) // 2 if q_family == "full" else 0
    families = 0
    if q_family == "iaf":  # each step a MADE: masked (full-size) linear layers K -> hidden_dims -> 2K
        sizes = [k, *q["hidden_dims"], 2 * k]
        families += q["n_steps"] * sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    if p_family == "mog":
        families += p["n_components"] * (1 + 2 * k)
    elif p_family == "vamp":
        families += p["n_components"] * math.prod(data_shape)
    last_in = (
        hidden_dims[-1]
        if arch == "mlp"
        else hidden_dims[-1] * math.prod(_halvings(data_shape[1:], len(hidden_dims))[-1])
    )
    return (
        _networks(data_shape, latent_dim, hidden_dims, arch, activation, likelihood) + extra * (last_in + 1) + families
    )


def _networks(data_shape, latent_dim: int, hidden_dims, arch: str, activation: str, likelihood: str) -> int:
    c, *hw = data_shape
    out = FAMILIES[likelihood].params_per_dim
    if arch == "mlp":

        def mlp(sizes):
            gate = 2 if activation == GATED else 1  # a gated hidden layer is a linear layer of twice the width
            return sum(
                (n_in + 1) * n_out * (gate if i < len(sizes) - 2 else 1)
                for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
            )

        d = math.prod(data_shape)
        return mlp([d, *hidden_dims, 2 * latent_dim]) + mlp([latent_dim, *reversed(hidden_dims), out * d])
    channels = [c, *hidden_dims]
    convs = sum(9 * c_in * c_out + c_out for c_in, c_out in zip(channels[:-1], channels[1:]))
    last = hidden_dims[-1] * math.prod(_halvings(hw, len(hidden_dims))[-1])
    deconvs = sum(
        9 * c_in * c_out + c_out for c_in, c_out in zip(reversed(channels[1:]), [*reversed(channels[1:-1]), out * c])
    )
    return convs + (last + 1) * 2 * latent_dim + (latent_dim + 1) * last + deconvs


# Bytes a parameter costs in training: itself, its gradient and an Adam-like optimiser's two moments, in float32.
BYTES_PER_PARAMETER = 16


# Memory a training process takes before its model and data: the interpreter, torch and Lightning.
PROCESS_BYTES = 1 << 29


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new process now (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


KL_ESTIMATORS = ("analytic", "mc")
GRADIENTS = ("reparam", "stl", "dreg")


def check_objective(
    *,
    beta=1.0,
    warmup_steps=0,
    warmup_epochs=0,
    free_bits=0.0,
    kl_estimator="analytic",
    iw_samples=1,
    gradient="reparam",
) -> None:
    """Refuse settings the training objective (training/objective.py) cannot be built from."""
    require("beta", beta, finite(beta) and beta >= 0, "KL weight", "a number >= 0 (1 is the ELBO)")
    for name, value in (("warmup_steps", warmup_steps), ("warmup_epochs", warmup_epochs)):
        require(name, value, integer(value, 0), "warm-up length", "an integer >= 0 (0 turns warm-up off)")
    require(
        "free_bits",
        free_bits,
        finite(free_bits) and free_bits >= 0,
        "free-bits floor",
        "a number >= 0 of nats per latent dimension (0 turns it off)",
    )
    require(
        "kl_estimator",
        kl_estimator,
        one_of(kl_estimator, KL_ESTIMATORS),
        "KL estimator",
        f"one of {', '.join(KL_ESTIMATORS)}",
    )
    require(
        "iw_samples",
        iw_samples,
        integer(iw_samples, 1),
        "number of importance samples",
        "an integer >= 1 (1: the ELBO; e.g. 5)",
    )
    require("gradient", gradient, one_of(gradient, GRADIENTS), "gradient estimator", f"one of {', '.join(GRADIENTS)}")
    if warmup_steps and warmup_epochs:
        raise BadArgument(
            f"{{warmup_steps}}={warmup_steps} and {{warmup_epochs}}={warmup_epochs} are "
            "both set; set one of them, the other to 0."
        )
    if gradient == "stl" and iw_samples > 1:
        raise BadArgument(
            f"{{gradient}}=stl with {{iw_samples}}={iw_samples}: sticking the landing is unbiased for one "
            "sample only; use {gradient}=dreg, its unbiased form for k > 1 (Tucker et al. 2019)."
        )
    if free_bits > 0 and (iw_samples > 1 or gradient != "reparam"):
        raise BadArgument(
            f"{{free_bits}}={free_bits} applies to the ELBO with its KL in closed form; with "
            f"{{iw_samples}}={iw_samples} and {{gradient}}={gradient} the KL is inside the sampled "
            "bound. Set {free_bits}=0, or train the ELBO ({iw_samples}=1, {gradient}=reparam)."
        )


VAL_SPLITS = ("random", "last")


def _split_size(v) -> bool:
    """A count of examples (an integer >= 1) or a fraction in (0, 1)."""
    return (integer(v, 1) or isinstance(v, float) and (0 < v < 1 or v >= 1 and v.is_integer())) and finite(v)


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seeds are 32-bit


def seed(v) -> bool:
    return integer(v, 0) and v <= SEED_MAX


def _switch(v) -> bool:
    return isinstance(v, bool)


def _size(v) -> bool:
    return integer(v, 1) or isinstance(v, (list, tuple)) and len(v) == 2 and all(integer(s, 1) for s in v)


def _folder_name(v) -> bool:
    v = os.fspath(v) if isinstance(v, os.PathLike) else v
    return isinstance(v, str) and 0 < len(v) and "\0" not in v


# A datamodule's arguments (data/): the rule of each, by name. Only the arguments a datamodule is given are checked.
DATA_RULES = {
    "batch_size": (lambda v: integer(v, 1), "batch size", "an integer >= 1, e.g. {batch_size}=128"),
    "eval_batch_size": (lambda v: integer(v, 1), "batch size", "an integer >= 1, e.g. {eval_batch_size}=1000"),
    "val_size": (_split_size, "number of examples", "a count >= 1 or a fraction in (0, 1), e.g. {val_size}=0.1"),
    "test_size": (_split_size, "number of examples", "a count >= 1 or a fraction in (0, 1), e.g. {test_size}=0.1"),
    "binarize": (
        lambda v: v is None or _switch(v),
        "switch",
        "true, false, or null (binarise exactly when the likelihood is of binary data)",
    ),
    "split_seed": (seed, "seed", "an integer from 0 to 2**32 - 1, e.g. {split_seed}=0"),
    "seed": (seed, "seed", "an integer from 0 to 2**32 - 1, e.g. seed=3"),
    "on_device": (_switch, "switch", "true or false"),
    "val_split": (
        lambda v: one_of(v, VAL_SPLITS),
        "validation split",
        "random (val_size examples drawn with {split_seed}) or last (the training set's last val_size "
        "examples, in file order)",
    ),
    "eval_binarize_numpy_seed": (
        lambda v: v is None or seed(v),
        "seed",
        "null (vae-cli's fixed seeds) or an integer from 0 to 2**32 - 1, e.g. 777 as in the reference code",
    ),
    "likelihood": (lambda v: one_of(v, FAMILIES), "likelihood", f"one of {', '.join(FAMILIES)}"),
    "data_dir": (lambda v: v is None or _folder_name(v), "folder", "a folder's path, e.g. {data_dir}=data"),
    "path": (
        lambda v: v is not None and _folder_name(v),
        "folder",
        "the folder of your images, e.g. {path}=~/pictures",
    ),
    "channels": (lambda v: one_of(v, (1, 3)), "number of channels", "1 (grey) or 3 (RGB)"),
    "image_size": (_size, "image size", "an integer >= 1 or a pair [height, width], e.g. {image_size}=[32,32]"),
    "num_workers": (
        lambda v: integer(v, 0),
        "number of workers",
        "an integer >= 0 (0: read images in the main process)",
    ),
    "skip_unreadable": (_switch, "switch", "true or false"),
}


def check_data(**arguments) -> None:
    """Refuse datamodule arguments that break their rule (DATA_RULES); arguments without one are the class's."""
    for name, value in arguments.items():
        if name in DATA_RULES:
            ok, what, use = DATA_RULES[name]
            require(name, value, ok(value), what, use)


NAME_MAX = 200  # a file name's characters: the file system's 255, less what a checkpoint's version and suffix add


def _text(v) -> bool:
    return isinstance(v, str) and 0 < len(v) < 4096 and "\0" not in v


# The arguments of the callbacks and loggers the shipped configs name (configs/callbacks, configs/logger), by name:
# types their classes assume without checking (a folder that is a boolean fails deep inside training otherwise).
PART_RULES = {
    "dirpath": (_text, "folder", "a folder's path"),
    "save_dir": (_text, "folder", "a folder's path"),
    "filename": (
        lambda v: v is None or _text(v) and all(len(part) <= NAME_MAX for part in v.split("/")),
        "file name",
        "a name without a suffix, of at most 200 characters, e.g. best",
    ),
    "monitor": (lambda v: v is None or _text(v), "metric", "a logged metric, e.g. val/elbo, or null"),
    "mode": (lambda v: one_of(v, ("min", "max")), "direction", "min or max"),
    "save_top_k": (lambda v: integer(v, -1), "number of checkpoints", "an integer >= -1 (-1: all), e.g. 1"),
    "every_n_epochs": (lambda v: integer(v, 0), "interval", "an integer >= 0 of epochs (0: never), e.g. 10"),
    "n": (lambda v: integer(v, 1) and v <= 4096, "number of images", "an integer from 1 to 4096, e.g. 64"),
    "iw_samples": (lambda v: integer(v, 0), "number of importance samples", "an integer >= 0 (0: off), e.g. 100"),
    "iw_batch": (lambda v: integer(v, 1), "number of (example, sample) pairs", "an integer >= 1, e.g. 50000"),
    "max_points": (lambda v: integer(v, 0), "number of points", "an integer >= 0, e.g. 2000"),
    "patience": (lambda v: integer(v, 0), "number of epochs", "an integer >= 0, e.g. 50"),
    "start_epoch": (lambda v: integer(v, 0), "epoch", "an integer >= 0"),
    "save_last": (lambda v: v is None or isinstance(v, bool) or v == "link", "switch", "true, false, null or link"),
    "auto_insert_metric_name": (_switch, "switch", "true or false"),
    "name": (lambda v: v is None or v == "" or _text(v), "name", "a name, empty, or null"),
    "version": (
        lambda v: v is None or v == "" or _text(v) or integer(v, 0),
        "version",
        "a name, an integer >= 0, empty, or null",
    ),
    "default_hp_metric": (_switch, "switch", "true or false"),
    "decay": (
        lambda v: finite(v) and 0 < v < 1,
        "decay",
        "a number in (0, 1): e.g. 0.999 for an average over about the last 1,000 steps",
    ),
}
PARTS = ("vae_cli.", "pytorch_lightning.")  # the classes whose arguments PART_RULES knows


def check_part(**arguments) -> None:
    """Refuse a callback's or logger's arguments that break their rule (PART_RULES)."""
    for name, value in arguments.items():
        if name in PART_RULES:
            ok, what, use = PART_RULES[name]
            require(name, value, ok(value), what, use)


# The image shape of each of vae-cli's datamodules, (C, H, W), known before any data is read.
DATA_SHAPES = {
    "vae_cli.data.Digits": (1, 8, 8),
    "vae_cli.data.MNIST": (1, 28, 28),
    "vae_cli.data.FashionMNIST": (1, 28, 28),
    "vae_cli.data.CIFAR10": (3, 32, 32),
}


def data_shape(data: dict) -> tuple[int, ...] | None:
    """The shape of the images a data config describes, where known from the config alone."""
    if data.get("_target_") == "vae_cli.data.ImageFolder":
        size = data.get("image_size", 32)
        return (data.get("channels", 3), *((size, size) if isinstance(size, int) else size))
    target = data.get("_target_")
    return DATA_SHAPES.get(target) if isinstance(target, str) else None


def folder_key(key: str, value, must_exist: bool) -> str | None:
    """Why the file system refuses `key`'s folder (None when it does not): a file where a folder is meant, or (for a
    folder that must exist) none there; the folder of data that vae-cli writes may not exist yet."""
    if not isinstance(value, str):
        return None
    path = Path(os.path.expanduser(value))
    try:
        if path.exists() and not path.is_dir():
            return f"{key}={value!r} is a file, not a folder; point it at a folder"
        if must_exist and not path.is_dir():
            return f"{key}={value!r}: there is no such folder"
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"{key}={value!r} lies below {parent}, which is a file, not a folder"
    except OSError as e:  # a name too long, a folder that cannot be looked into
        return f"{key}={value[:80]!r}{'...' if len(value) > 80 else ''} cannot be used as a folder ({e.strerror})"
    return None
