"""Choosing the torch device a session runs on: what is asked for, checked against what exists."""

from __future__ import annotations

import torch

_KNOWN_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """List the device choices this machine offers: ``auto``, ``cpu``, each GPU, ``mps``.

    Returns
    -------
    list of str
        Device strings :func:`resolve_device` accepts here.
    """
    found = ["auto", "cpu"]
    found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(spec: str | torch.device = "auto") -> tuple[torch.device, str]:
    """Turn a device request into a torch device that really exists here.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU. Anything else is an explicit
        torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) and is checked.

    Returns
    -------
    device : torch.device
        The device to use.
    reason : str
        One sentence saying why this device was chosen (shown to users).

    Raises
    ------
    ValueError
        If ``spec`` is not a device torch knows, or names a device that is not available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {spec!r}")
    text = spec.strip().lower()
    if text in ("", "auto"):
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            return torch.device("cuda:0"), f"auto: CUDA is available ({name})"
        if _mps_available():
            return torch.device("mps"), "auto: no CUDA; Apple MPS is available"
        return torch.device("cpu"), (
            f"auto: no CUDA or MPS found; using the CPU with {torch.get_num_threads()} threads"
        )

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"Unknown device {spec!r}: expected 'auto' or one of {', '.join(_KNOWN_TYPES)} "
            "(optionally with an index, e.g. 'cuda:1')"
        ) from err
    if device.type not in _KNOWN_TYPES:
        raise ValueError(
            f"Unsupported device {spec!r}: expected 'auto' or one of {', '.join(_KNOWN_TYPES)}"
        )
    if device.type == "cpu":
        return torch.device("cpu"), "requested: CPU"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"Device {spec!r} requested but CUDA is not available here (use 'auto' or 'cpu')"
            )
        count = torch.cuda.device_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ValueError(
                f"Device {spec!r} requested but only {count} CUDA device(s) exist "
                f"(valid: {', '.join(f'cuda:{i}' for i in range(count))})"
            )
        name = torch.cuda.get_device_name(index)
        return torch.device("cuda", index), f"requested: CUDA device {index} ({name})"
    if not _mps_available():
        raise ValueError(
            f"Device {spec!r} requested but Apple MPS is not available here (use 'auto' or 'cpu')"
        )
    return torch.device("mps"), "requested: Apple MPS"
