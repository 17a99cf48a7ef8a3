"""Weights held beside the graph, as numpy arrays, instead of inside its protobuf.

An ONNX model is one protobuf message, and protobuf can neither serialise nor copy a message of 2 GiB or more
("Failed to serialize proto"). Loading copies and serialises the model many times (normalising it, rewriting its
batch, probing its shapes, building each session), so torchvision's vit_h_14 and regnet_y_128gf (2.5 GB of weights,
stored as external data) could not be loaded at all, and every copy of a 1 GB model costs seconds.

A model whose weights reach :data:`HOLD_ABOVE_BYTES` therefore has its large initializers (:data:`HOLD_MIN_BYTES` and
up) taken out when it is read (:func:`hold_inplace`, called by graph/loading/read.py): each keeps its name, type and
dims in the graph, marked as external data whose ``location`` names the held array (``cnnviz-held-<holding>-<n>``);
the arrays stay in this process's store. Rewrites then copy only these placeholders, and:

* :func:`value` reads any initializer, held or not (use it instead of ``numpy_helper.to_array``);
* :func:`session` builds an onnxruntime session, handing the held arrays over as OrtValues
  (``SessionOptions.add_external_initializers``: onnxruntime copies them into its graph, so the optimisers and
  kernels see ordinary initializers);
* the backward graph never folds a copy derived from a held weight into the protobuf: the Conv rule reads it
  through ConvTranspose and the MatMul rule through Gemm with ``transB``, both in place; any other rule reads it
  through graph nodes, as a weight computed at run time (onnxruntime folds those into the session);
* sessions over a held model run without onnxruntime's Conv+BatchNorm fusion and NCHWc reordering
  (``runtime.HELD_DISABLED_OPTIMIZERS``), which would copy every weight into each session;
* :func:`save` writes such a model as a standard ONNX file with its weights as external data.

Lifetime: the arrays of one read form a *holding*, kept until every owner that :func:`claim`\\ ed it (each
``Model``) has been garbage-collected. A holding nobody claims (a model read but never loaded) lives until
:func:`release` or the end of the process.
"""
from __future__ import annotations

import itertools
import threading
import uuid
import weakref
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .. import settings
from ..errors import InputError, ModelLoadError

#: A model whose initializers hold this many bytes or more has its large ones held outside the protobuf. Well
#: below protobuf's 2 GiB (a backward graph of a model held inside carries a derived copy of most weights: flipped
#: kernels, transposed matrices), and low enough for memory: a model held inside also keeps its weights twice (in
#: the protobuf and in the sessions' shared store) plus those derived copies; held, they are in memory once: timm's
#: VGG-16 (553 MB) peaks at 1.9 GB over load and five methods instead of 4.6 GB (8 GB and more with NCHWc copies),
#: torchvision's at 1.8 GB instead of 3.45 (issue 26; benchmarks/memory_phases.py, benchmarks/memory_sessions.py).
#: None: ``CNNVIZ_HOLD_ABOVE_BYTES`` (:mod:`onnx_cnnviz.settings`, default 256 MiB), read when a model is loaded;
#: a number set here wins (0: hold the large weights of every model, as tests/graph/test_held.py does).
HOLD_ABOVE_BYTES: int | None = None
#: Only initializers this large are held: weights, not the shape constants and scalars that passes read and edit
#: (None: ``CNNVIZ_HOLD_MIN_BYTES``, default 1 MiB).
HOLD_MIN_BYTES: int | None = None


def hold_above_bytes() -> int:
    """The weight size from which a model is held: :data:`HOLD_ABOVE_BYTES`, else ``CNNVIZ_HOLD_ABOVE_BYTES``.

    Raises:
        InputError: the environment variable is not a whole number of bytes.
    """
    return settings.HOLD_ABOVE_BYTES.read() if HOLD_ABOVE_BYTES is None else HOLD_ABOVE_BYTES


def hold_min_bytes() -> int:
    """The size from which an initializer is held: :data:`HOLD_MIN_BYTES`, else ``CNNVIZ_HOLD_MIN_BYTES``.

    Raises:
        InputError: the environment variable is not a whole number of bytes.
    """
    return settings.HOLD_MIN_BYTES.read() if HOLD_MIN_BYTES is None else HOLD_MIN_BYTES


_PREFIX = "cnnviz-held-"
#: Types an array in the store may have (numpy and onnxruntime agree on their memory layout).
_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
          TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT16: np.int16,
          TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16}

_ONNX_TYPE = {np.dtype(v): k for k, v in _TYPES.items()}

_lock = threading.Lock()
_arrays: dict[str, np.ndarray] = {}  # key ("<holding>-<n>") -> array
_owners: dict[str, weakref.WeakSet] = {}  # holding -> objects that keep it
_counter = itertools.count()


def key_of(tensor: TensorProto) -> str | None:
    """The store key of a held initializer, or None when ``tensor`` holds its own data (or real external data)."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location" and entry.value.startswith(_PREFIX):
            return entry.value[len(_PREFIX):]
    return None


def is_held(tensor: TensorProto) -> bool:
    return key_of(tensor) is not None


def holding_of(tensor: TensorProto) -> str | None:
    """The holding a held initializer's array belongs to (None when ``tensor`` is not held)."""
    key = key_of(tensor)
    return None if key is None else key.rsplit("-", 1)[0]


def holdings(model: onnx.ModelProto) -> set[str]:
    """The holdings whose arrays ``model``'s initializers read."""
    return {h for t in model.graph.initializer if (h := holding_of(t)) is not None}


def any_held(model: onnx.ModelProto) -> bool:
    return any(key_of(t) is not None for t in model.graph.initializer)


def value(tensor: TensorProto) -> np.ndarray:
    """``tensor``'s values as an array: the held array itself (read-only: never write into it) or
    ``numpy_helper.to_array``."""
    key = key_of(tensor)
    if key is None:
        return numpy_helper.to_array(tensor)
    with _lock:
        array = _arrays.get(key)
    if array is None:
        raise ModelLoadError(f"the weights of initializer '{tensor.name}' were released with the model that held them; "
                             "keep the loaded Model alive while its graphs are in use.")
    return array


def new_holding() -> str:
    return f"{uuid.uuid4().hex[:12]}"


def put(tensor: TensorProto, array: np.ndarray, holding: str) -> None:
    """Make ``tensor`` a placeholder for ``array`` (stored under ``holding``); its name is kept, type and dims are
    ``array``'s."""
    dtype = _ONNX_TYPE.get(array.dtype)
    if dtype is None:
        raise InputError(f"cannot hold an array of dtype {array.dtype}.")
    array = np.ascontiguousarray(array).view()  # a view: the caller's own array stays writable
    array.setflags(write=False)
    key = f"{holding}-{next(_counter)}"
    with _lock:
        _arrays[key] = array
        _owners.setdefault(holding, weakref.WeakSet())
    name = tensor.name
    tensor.Clear()
    tensor.name = name
    tensor.data_type = dtype
    tensor.dims.extend(array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", _PREFIX + key), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v


def should_hold(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s initializers reach :data:`HOLD_ABOVE_BYTES`, counted from their dims (their data may not
    be read yet)."""
    return sum(declared_bytes(t) for t in model.graph.initializer) >= hold_above_bytes()


def declared_bytes(tensor: TensorProto) -> int:
    """Bytes of ``tensor``'s values, from its type and dims."""
    dtype = _TYPES.get(tensor.data_type)
    if dtype is None:
        return tensor.ByteSize()
    return int(np.prod(tensor.dims, dtype=np.int64)) * np.dtype(dtype).itemsize


#: Only float tensors are held: weights. Integer ones are shapes, axes and indices, which passes read, fold and
#: rewrite, and shape inference propagates.
_HELD_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


def holdable(tensor: TensorProto) -> bool:
    return (tensor.data_type in _HELD_TYPES and key_of(tensor) is None and not tensor.HasField("segment")
            and declared_bytes(tensor) >= hold_min_bytes())


def copy_holding(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (left as it is) whose large initializers are held (see :func:`hold_inplace`); made one
    initializer at a time, so ``model`` may be over protobuf's limit."""
    holding = new_holding()

    def hold(tensor):
        if not holdable(tensor) or tensor.data_location == TensorProto.EXTERNAL:
            return tensor
        placeholder = TensorProto(name=tensor.name)
        put(placeholder, numpy_helper.to_array(tensor), holding)
        return placeholder

    return _rebuilt(model, hold)


def hold_inplace(model: onnx.ModelProto, read_external=None) -> str | None:
    """Move ``model``'s large initializers into the store (see the module docstring); returns the holding, or None
    when nothing was held. ``read_external(tensor)``: the array of a tensor whose data are in an external file, read
    straight into numpy, never through the protobuf; the others are read with :func:`numpy_helper.to_array`."""
    holding = None
    for tensor in model.graph.initializer:
        if not holdable(tensor):
            continue
        external = tensor.data_location == TensorProto.EXTERNAL
        array = read_external(tensor) if external and read_external is not None else numpy_helper.to_array(tensor)
        holding = holding or new_holding()
        put(tensor, array.reshape(tuple(tensor.dims)), holding)
    return holding


def claim(owner, model: onnx.ModelProto) -> None:
    """Keep the holdings ``model`` reads while ``owner`` lives (and, once all their owners are gone, free them)."""
    for holding in holdings(model):
        with _lock:
            owners = _owners.setdefault(holding, weakref.WeakSet())
            if owner in owners:
                continue
            owners.add(owner)
        weakref.finalize(owner, _release_if_unowned, holding)


def _release_if_unowned(holding: str) -> None:
    with _lock:
        owners = _owners.get(holding)
        # Iterated, not len(): the dying owner's entry may not be removed yet when this runs.
        if owners is not None and any(True for _ in owners):
            return
    release(holding)


def release(holding: str) -> None:
    """Free the arrays of ``holding`` (any graph still reading them then fails with a typed error)."""
    with _lock:
        for key in [k for k in _arrays if k.rsplit("-", 1)[0] == holding]:
            del _arrays[key]
        _owners.pop(holding, None)


def release_keys(keys) -> None:
    """Free the held arrays of ``keys`` (:func:`key_of` of placeholders that no graph reads any more: the stored
    weights a load-time fold replaced, graph/loading/weights.py); the rest of their holding stays."""
    with _lock:
        for key in keys:
            _arrays.pop(key, None)


def held_bytes() -> int:
    """Bytes held in the store now (all holdings)."""
    with _lock:
        return sum(a.nbytes for a in _arrays.values())


def _rebuilt(model: onnx.ModelProto, each) -> onnx.ModelProto:
    """A new model: ``model`` without its initializers, then ``each(tensor)`` of every initializer. Never copies the
    whole message at once (``copy.deepcopy`` serialises it, which protobuf refuses at 2 GiB)."""
    out = onnx.ModelProto()
    copy_fields(model, out, "graph")
    copy_fields(model.graph, out.graph, "initializer")
    out.graph.initializer.extend(each(tensor) for tensor in model.graph.initializer)
    return out


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` made one initializer at a time (see :func:`_rebuilt`)."""
    return _rebuilt(model, lambda tensor: tensor)


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as a plain ONNX model: a copy whose held initializers carry their data again (``model`` itself when
    none is held). A model of 2 GiB or more can then only be written with ``save_as_external_data=True``."""
    if not any_held(model):
        return model
    return _rebuilt(model, lambda t: t if key_of(t) is None else numpy_helper.from_array(value(t), t.name))


def _repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


def copy_fields(source, target, skip: str) -> None:
    """Copy every set field of protobuf message ``source`` into ``target`` except ``skip``."""
    for field, val in source.ListFields():
        if field.name == skip:
            continue
        if _repeated(field):
            getattr(target, field.name).extend(val)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(val)
        else:
            setattr(target, field.name, val)


def session(model: onnx.ModelProto, options, providers: list[str], **kwargs):
    """``onnxruntime.InferenceSession`` over ``model``, its held weights handed over in memory (see the module
    docstring); ``options`` is changed (the held weights are added to it)."""
    import onnxruntime as ort

    add_to(model, options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers, **kwargs)


def add_to(model: onnx.ModelProto, options, skip=()) -> list:
    """Add ``model``'s held weights (but those named in ``skip``) to session ``options`` as external initializers;
    returns the OrtValues (onnxruntime copies them while the session is built)."""
    import onnxruntime as ort

    names, values = [], []
    for tensor in model.graph.initializer:
        if tensor.name in skip or key_of(tensor) is None:
            continue
        names.append(tensor.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(value(tensor)))
    if names:
        options.add_external_initializers(names, values)
    return values


def save(model: onnx.ModelProto, path, data_name: str | None = None) -> Path:
    """Write ``model`` to ``path`` as a standard ONNX file, its held weights as external data in ``data_name``
    (a file name, default ``<file name>.data``) beside it; a model without held weights is written as one file.
    Never overwrites: an existing file at either path is an :class:`InputError`, and what a failed write leaves is
    removed. Returns the path written."""
    path = Path(path)
    data_name = data_name or f"{path.name}.data"
    if Path(data_name).name != data_name or data_name in (".", ".."):
        raise InputError(f"data_name must be a file name (it is written beside '{path.name}'), not {data_name!r}.")
    data_path = path.parent / data_name
    held_any = any_held(model)
    for target in (path, data_path) if held_any else (path,):
        if target.exists():
            raise InputError(f"'{target}' exists; give a new path (nothing is overwritten).")
    out = copy_model(model) if held_any else model
    written = []
    try:
        if held_any:
            with open(data_path, "xb") as f:
                written.append(data_path)
                offset = 0
                for tensor in out.graph.initializer:
                    if key_of(tensor) is None:
                        continue
                    data = np.ascontiguousarray(value(tensor), dtype=value(tensor).dtype.newbyteorder("<"))
                    pad = -offset % 4096  # page-aligned, so that onnxruntime can memory-map each tensor
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(memoryview(data).cast("B"))
                    del tensor.external_data[:]
                    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(data.nbytes))):
                        entry = tensor.external_data.add()
                        entry.key, entry.value = k, v
                    offset += data.nbytes
        with open(path, "xb") as f:
            written.append(path)
            f.write(out.SerializeToString())
    except BaseException as exc:
        for made in written:  # only files this call created
            made.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise InputError(f"'{exc.filename}' appeared while saving; nothing was overwritten.") from None
        raise
    return path
