"""A class of the user's choosing refusing its config, said as the user's error naming the config key: named() builds
the object, and its refusal (BadArgument, or the class's own exception) becomes group.<key>'s message. Shared by the
settings' checks (checks.py) and the loading of models and data (loading.py)."""

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import BadArgument, UserError


def named(group: str, build, *args, **kwargs):
    """build(*args, **kwargs), the constructor of an object the config group `group` describes; an argument it
    refuses (BadArgument) becomes the user's error naming the config key, group.<argument>. A class that cannot
    be imported or called with these settings (Hydra's InstantiationException, a TypeError or ValueError of the
    class's own, Lightning's MisconfigurationException) is the user's error too, naming the group and the keys
    its message mentions."""
    from hydra.errors import InstantiationException

    try:
        return build(*args, **kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (a class of the user's choosing, called with the user's settings)
        refusal = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        if isinstance(refusal, BadArgument):
            raise UserError(refusal.named(lambda name: f"{group}.{name}")) from None
        raise UserError(
            refused_by(group, refusal, args[0] if args and isinstance(args[0], (dict, DictConfig)) else kwargs)
        ) from None


def refused_by(group: str, error: BaseException, config) -> str:
    """The user's message for a class that refused its config: the keys its reason names (or all of them, with
    their values, where it names none), and the reason."""
    import re

    why = " ".join(str(error).split())[:400] or type(error).__name__
    config = dict(config or {})
    target = config.get("_target_")
    if isinstance(error, (ImportError, AttributeError)) or re.search(
        r"\b(target|import|callable)\b", why, re.IGNORECASE
    ):
        return (
            f"{group}._target_={target!r} cannot be built ({why}). Name a class that is installed here, with "
            f"the settings it takes (vae-train --cfg job shows {group})."
        )
    settings_ = {k: v for k, v in config.items() if isinstance(k, str) and k != "_target_"}
    keys = [k for k in settings_ if re.search(rf"\b{re.escape(k)}\b", why)] or list(settings_)
    shown = ", ".join(f"{group}.{k}={short(settings_[k])}" for k in keys)
    return (
        f"{group}._target_={target!r} refused its settings ({shown}): {why}. Change the value it names (vae-train "
        "--cfg job shows them)."
    )


def short(value) -> str:
    text = repr(OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value)
    return text if len(text) <= 120 else f"{text[:90]}...{text[-20:]} ({len(text)} characters)"
