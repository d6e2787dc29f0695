"""Shared pieces of the property-based (Hypothesis) tests: strategies and the call checker.

Every fuzzed call goes through :func:`check_call`, which states the boundary's contract:
the call returns, or raises ``ValueError``/``TypeError`` whose message names the argument
at fault; it never raises another type, never changes its inputs and never allocates more
than :data:`MEMORY_LIMIT_MB` for the tiny inputs used here.

The number of examples follows the Hypothesis profile loaded in ``conftest.py``
(``HYPOTHESIS_PROFILE=ci`` by default, ``long`` for a long run): see :func:`examples`.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import sys
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

try:
    import resource
except ImportError:  # Windows: no hard limit, tracemalloc's measurement only
    resource = None

CI_MAX_EXAMPLES = 25
"""``max_examples`` of the ``ci`` profile; :func:`examples` scales other profiles from it."""

LONG_MAX_EXAMPLES = 20 * CI_MAX_EXAMPLES
"""``max_examples`` of the ``long`` profile: every test runs 20 times its CI examples."""

MEMORY_LIMIT_MB = 500
"""Most memory one fuzzed call may allocate (the inputs here are a few kilobytes)."""

DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t)
    for t in (
        bool,
        np.uint8,
        np.uint16,
        np.int8,
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.complex128,
        object,
    )
)
"""Every dtype the fuzzed arrays take."""

REAL_DTYPES: tuple[np.dtype, ...] = tuple(d for d in DTYPES if d.kind in "iuf")
"""The dtypes an image may legitimately have."""

LAYOUTS = ("C", "F", "strided", "reversed")
"""Memory layouts: C order, Fortran order, a non-contiguous strided view, negative strides."""


def examples(ci: int) -> settings:
    """Settings with ``ci`` examples under the ``ci`` profile, scaled for other profiles.

    Parameters
    ----------
    ci : int
        Number of examples in CI (the ``ci`` profile's share of this test).

    Returns
    -------
    hypothesis.settings
        The current profile's settings with ``max_examples`` scaled: the ``long`` profile
        runs ``20 * ci`` examples.
    """
    scale = settings.default.max_examples / CI_MAX_EXAMPLES
    return settings(max_examples=max(1, round(ci * scale)))


def write_tiny_hovernet(path: Path) -> Path:
    """Save an untrained HoVer-Net of a few thousand weights (a 35 kB file; loads in ms).

    Parameters
    ----------
    path : pathlib.Path
        The ``.safetensors`` file to write.

    Returns
    -------
    pathlib.Path
        ``path``: 1 input channel, classes background, a, b; percentile normalisation.
    """
    from napari_scribble_refine.core.models.hovernet import HoVerNet, HoVerNetConfig
    from napari_scribble_refine.core.models.hovernet_checkpoint import save_hovernet_safetensors

    config = HoVerNetConfig(
        mode="fast",
        nr_types=3,
        in_channels=1,
        padding="same",
        stem_channels=4,
        stem_kernel=3,
        block_mid=(2, 2, 2, 2),
        block_out=(4, 4, 4, 4),
        block_units=(1, 1, 1, 1),
        decoder_channels=(4, 4, 4),
        dense_units=(1, 1),
        dense_bottleneck=4,
        dense_growth=4,
        dense_groups=2,
        kernel_size=3,
        input_scale=1.0,
    )
    torch.manual_seed(0)
    return save_hovernet_safetensors(
        HoVerNet(config),
        path,
        ["background", "a", "b"],
        normalisation={"kind": "percentile", "low": 1.0, "high": 99.8},
    )


# --------------------------------------------------------------------------- strategies
def _elements(dtype: np.dtype) -> st.SearchStrategy:
    """Values of one dtype: small whole numbers (valid labels) and the dtype's extremes."""
    small = st.integers(0, 6)
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        return st.one_of(
            small, st.integers(-3, -1) if dtype.kind == "i" else small, hnp.from_dtype(dtype)
        )
    if dtype.kind == "f":
        huge = {2: 6e4, 4: 3e38, 8: 1e300}[dtype.itemsize]
        specials = st.sampled_from([math.nan, math.inf, -math.inf, huge, -huge, -1.5, 0.5])
        return st.one_of(small.map(float), specials, hnp.from_dtype(dtype))
    if dtype.kind == "c":
        return st.one_of(small.map(complex), hnp.from_dtype(dtype))
    return st.one_of(small, st.floats(), st.none(), st.text(max_size=2))


def _apply_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``array`` in another memory layout."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        big = np.zeros(tuple(2 * s for s in array.shape), dtype=array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "reversed" and array.ndim:
        axes = tuple(range(array.ndim))
        return np.flip(np.flip(array, axes).copy(), axes)
    return np.array(array, order="C", copy=True)


def layouts(array: np.ndarray) -> st.SearchStrategy[np.ndarray]:
    """The values of ``array`` in any memory layout, sometimes read-only.

    Parameters
    ----------
    array : numpy.ndarray
        The values.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Copies of ``array`` in the layouts of :data:`LAYOUTS`.
    """

    def build(layout: str, read_only: bool) -> np.ndarray:
        out = _apply_layout(array, layout)
        if read_only:
            out.setflags(write=False)
        return out

    return st.builds(build, st.sampled_from(LAYOUTS), st.booleans())


@st.composite
def arrays(
    draw: st.DrawFn,
    *,
    shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None,
    dtypes: Sequence[np.dtype] = DTYPES,
    min_dims: int = 0,
    max_dims: int = 4,
    max_side: int = 5,
) -> np.ndarray:
    """Draw an array of any dtype, shape (zero-size axes too), values and memory layout.

    Parameters
    ----------
    draw : callable
        Hypothesis' draw function (supplied by ``st.composite``).
    shape : tuple of int or strategy, optional
        A fixed shape or a strategy for it; default: 0-d to ``max_dims``-d shapes with sides
        0 to ``max_side``.
    dtypes : sequence of numpy.dtype
        Dtypes to choose from.
    min_dims, max_dims, max_side : int
        Bounds of the random shape.

    Returns
    -------
    numpy.ndarray
        C order, Fortran order, a strided view or a negatively strided view; sometimes
        read-only.
    """
    if shape is None:
        shape = hnp.array_shapes(
            min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side
        )
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    dtype = draw(st.sampled_from(list(dtypes)))
    array = draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))
    return draw(layouts(array))


def spatial_shapes(max_side: int = 6, min_side: int = 1) -> st.SearchStrategy[tuple[int, ...]]:
    """(Y, X) or (Z, Y, X) shapes with small sides.

    Parameters
    ----------
    max_side, min_side : int
        Bounds of each side.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Shapes of 2 or 3 axes.
    """
    return hnp.array_shapes(min_dims=2, max_dims=3, min_side=min_side, max_side=max_side)


def label_arrays(shape: tuple[int, ...], top: int = 4) -> st.SearchStrategy[np.ndarray]:
    """Mostly valid scribbles of a shape: small non-negative integers, any layout.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    top : int
        Largest value.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Integer arrays in any layout.
    """
    ints = st.sampled_from([np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.int64)])
    return st.builds(
        _apply_layout,
        ints.flatmap(lambda d: hnp.arrays(d, shape, elements=st.integers(0, top))),
        st.sampled_from(LAYOUTS),
    )


# --------------------------------------------------------------------------- the checker
@dataclass
class Outcome:
    """What a checked call did: its result, or the (allowed) exception it raised."""

    result: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """True when the call returned."""
        return self.error is None


def _snapshot(value: Any) -> Any:
    """A deep copy of the array-like parts of ``value`` (arrays, tensors, containers)."""
    if isinstance(value, np.ndarray):
        return (
            "ndarray",
            value.copy(order="K"),
            value.dtype,
            value.shape,
            value.strides,
            value.flags.writeable,
        )
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().clone())
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_snapshot(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: _snapshot(v) for k, v in value.items()})
    network = value if isinstance(value, torch.nn.Module) else getattr(value, "network", None)
    if isinstance(network, torch.nn.Module):  # a network or a model adapter: its weights
        state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return ("weights", value, state, copy.deepcopy(getattr(value, "class_names", None)))
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return ("other", value)
    return ("identity", value)  # immutable (a RefineConfig, a path) or not comparable


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays have the same dtype, shape and values (NaN equals NaN).

    Parameters
    ----------
    a, b : numpy.ndarray
        The arrays.

    Returns
    -------
    bool
        True when equal; object arrays compare their elements' ``repr``.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        return [repr(v) for v in a.ravel()] == [repr(v) for v in b.ravel()]
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _assert_unchanged(before: Any, value: Any, where: str) -> None:
    kind = before[0]
    if kind == "ndarray":
        _, data, dtype, shape, strides, writeable = before
        assert (value.dtype, value.shape, value.strides, value.flags.writeable) == (
            dtype,
            shape,
            strides,
            writeable,
        ), f"{where}: the call changed the input array's dtype, shape, strides or flags"
        assert arrays_equal(value, data), f"{where}: the call modified the input array"
    elif kind == "tensor":
        assert torch.equal(value, before[1]), f"{where}: the call modified the input tensor"
    elif kind in ("list", "tuple"):
        assert len(value) == len(before[1]), f"{where}: the call changed the input's length"
        for i, (b, v) in enumerate(zip(before[1], value, strict=True)):
            _assert_unchanged(b, v, f"{where}[{i}]")
    elif kind == "dict":
        assert value.keys() == before[1].keys(), f"{where}: the call changed the input's keys"
        for k in value:
            _assert_unchanged(before[1][k], value[k], f"{where}[{k!r}]")
    elif kind == "weights":
        _, obj, state, class_names = before
        network = obj if isinstance(obj, torch.nn.Module) else obj.network
        now = network.state_dict()
        assert value is obj and now.keys() == state.keys(), f"{where}: the model changed"
        for k, v in state.items():
            assert torch.equal(now[k], v), f"{where}: the call modified the model's {k}"
        assert getattr(obj, "class_names", None) == class_names, f"{where}: classes changed"
    elif kind == "other":
        assert repr(value) == repr(before[1]), f"{where}: the call modified the input"
    else:
        assert value is before[1]


def _data_bytes() -> int:
    """The process's data segment and private writable mappings (``VmData``), in bytes.

    0 where it cannot be read (not Linux): :func:`memory_bound` then sets no hard limit.
    """
    if not sys.platform.startswith("linux") or resource is None:
        return 0
    try:
        with open("/proc/self/status") as status:
            match = re.search(r"VmData:\s+(\d+) kB", status.read())
    except OSError:
        return 0
    return int(match.group(1)) * 1024 if match else 0


@functools.cache
def _start_thread_pools() -> None:
    """Run small parallel torch operations once, so that their thread pools exist.

    Thread stacks count as data: pools started inside :func:`memory_bound` (one thread per
    core) would be charged to the call being measured, and could fail to start.
    """
    x = torch.rand(1, 4, 256, 256)
    torch.nn.functional.conv2d(x, torch.rand(4, 4, 3, 3), padding=1).sum().item()
    (torch.rand(256, 256) @ torch.rand(256, 256)).sum().item()


@contextmanager
def memory_bound(limit_mb: float = MEMORY_LIMIT_MB) -> Iterator[list[int]]:
    """Bound and measure the memory a block allocates.

    Two guards: a hard one, ``RLIMIT_DATA`` set to the current data size plus ``limit_mb``
    (so an allocation beyond the bound fails at once, in numpy, torch or a C library,
    instead of exhausting the machine; Linux only), and a measurement, ``tracemalloc``'s
    peak of the Python and numpy allocations, which the caller checks.

    Parameters
    ----------
    limit_mb : float
        The bound in MiB.

    Yields
    ------
    list of int
        Filled with the tracemalloc peak (bytes) when the block ends.
    """
    _start_thread_pools()
    peak: list[int] = []
    in_use = _data_bytes()
    if in_use:
        old = resource.getrlimit(resource.RLIMIT_DATA)
        hard_limit = in_use + int(limit_mb * 2**20)
        if old[1] != resource.RLIM_INFINITY:
            hard_limit = min(hard_limit, old[1])
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    if in_use:
        resource.setrlimit(resource.RLIMIT_DATA, (hard_limit, old[1]))
    try:
        yield peak
    finally:
        if in_use:
            resource.setrlimit(resource.RLIMIT_DATA, old)
        peak.append(tracemalloc.get_traced_memory()[1])
        if not was_tracing:
            tracemalloc.stop()


def _is_allocation_failure(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a failed allocation."""
    while error is not None:
        text = str(error)
        if (
            isinstance(error, MemoryError)
            or "can't allocate memory" in text
            or ("Unable to allocate" in text)
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def check_call(
    fn: Callable[..., Any],
    *args: Any,
    names: Sequence[str],
    allowed: tuple[type[BaseException], ...] = (ValueError, TypeError),
    limit_mb: float = MEMORY_LIMIT_MB,
    **kwargs: Any,
) -> Outcome:
    """Call ``fn`` and check the boundary contract.

    Parameters
    ----------
    fn : callable
        The public entry point.
    *args, **kwargs
        Its arguments. They are snapshot before the call and compared after it.
    names : sequence of str
        An error message must contain at least one of these (the argument at fault).
    allowed : tuple of exception types
        The exception types the call may raise.
    limit_mb : float
        Memory bound of the call (see :func:`memory_bound`).

    Returns
    -------
    Outcome
        The result or the allowed exception. Any other exception propagates (the test
        fails with it), as does an ``AssertionError`` for a broken contract.
    """
    before = _snapshot((args, kwargs))
    outcome = Outcome()
    try:
        with memory_bound(limit_mb) as peak:
            try:
                outcome.result = fn(*args, **kwargs)
            except allowed as err:
                outcome.error = err
    except BaseException as err:
        if _is_allocation_failure(err):
            raise AssertionError(
                f"{getattr(fn, '__qualname__', fn)} tried to allocate more than {limit_mb} MiB"
            ) from err
        raise
    assert peak[0] <= limit_mb * 2**20, (
        f"{getattr(fn, '__qualname__', fn)} allocated {peak[0] / 2**20:.0f} MiB "
        f"(tracemalloc peak), more than {limit_mb} MiB"
    )
    if outcome.error is not None:
        assert not _is_allocation_failure(outcome.error), (
            f"the call hit the {limit_mb} MiB memory bound and reported it as "
            f"{type(outcome.error).__name__}: {outcome.error}"
        )
        message = str(outcome.error)
        assert any(name in message for name in names), (
            f"{type(outcome.error).__name__} does not name the argument (one of {list(names)}):"
            f" {message}"
        )
    _assert_unchanged(before, (args, kwargs), "arguments")
    return outcome
