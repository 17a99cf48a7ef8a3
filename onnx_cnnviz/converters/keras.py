"""Keras / TensorFlow -> ONNX for explanation, through tf2onnx (installed as ``onnx_cnnviz.converters.keras``).

Needs the ``keras`` extra (``pip install 'onnx-cnnviz[keras]'``: tensorflow-cpu, Keras 3, tf2onnx); nothing here
imports TensorFlow until a conversion runs.

    from onnx_cnnviz.converters.keras import export
    export(my_keras_model, "mine.onnx", labels=["cat", "dog"], preprocess="tf")
    export("model.keras", "model.onnx")                    # or a legacy .h5 file

What the converter does:

* **NCHW input.** Keras image models are channels-last: their input is ``(N, H, W, C)``. onnx_cnnviz works on an
  ``(N, C, H, W)`` image input, so by default (``channels_last_input=True``) the conversion uses tf2onnx's
  ``inputs_as_nchw``: the ONNX input is declared ``(N, C, H, W)`` and one ``Transpose`` (perm 0,2,3,1) in front of
  the graph turns it back into what the Keras layers expect (tf2onnx's optimiser then pushes that Transpose through
  the convolutions, so the ONNX feature maps are NCHW too). Give NCHW arrays to the ONNX model:
  ``x_onnx = x_keras.transpose(0, 3, 1, 2)``. ``channels_last_input=False`` is for a Keras model whose input already
  is ``(N, C, H, W)`` (``data_format="channels_first"``): then nothing is transposed (TensorFlow's CPU kernels cannot
  run such a model, so without a GPU convert it with ``check=False``).
* **Or NHWC kept** (``keep_nhwc=True``): the ONNX input stays ``(N, H, W, C)``, exactly what plain tf2onnx
  (``python -m tf2onnx.convert`` without ``--inputs-as-nchw``) writes and what deployed TensorFlow models usually
  are. ``cnnviz.load`` detects that layout from the graph (``Model.input_layout == "NHWC"``) and takes NCHW arrays as
  for every other model, so both files explain the same way; the option exists to produce such files
  (tests/keras/test_keras_nhwc.py and benchmarks/what_loads.py check that both give the same maps).
* **Input dtype**: the Keras input's own. A model built on ``keras.Input(..., dtype="uint8")`` takes raw pixels and
  scales them inside (``Rescaling``); tf2onnx then writes ``Cast`` -> ``Mul``/``Add`` -> ``Transpose`` at the front of
  the graph and ``cnnviz.load`` reports ``Model.input_dtype == "uint8"``. Float and 8-bit integer inputs only (an
  image classifier's); any other dtype is an :class:`InputError`.
* **Dynamic batch**: the ONNX input and output have a symbolic batch dimension ``N``. H and W are the Keras
  model's (``input_size`` must agree when the model fixes them); a model built for any size (``Input((None, None,
  3))``) is exported at ``input_size`` when it is given, else with free H and W.
* **Inference mode**: the converter traces ``model(x, training=False)`` (BatchNormalization uses its moving statistics,
  Dropout is the identity).
* **The score.** A Keras classifier usually ends in ``Dense(K, activation="softmax")``; tf2onnx emits ``MatMul``
  (+ ``Add`` when the bias is not zero) followed by ``Softmax``, and onnx_cnnviz takes the score before a final
  Softmax (``Model.softmax_skipped``), so gradients are of the pre-softmax class score, as in Grad-CAM and as
  tf-keras-vis's ``ReplaceToLinear`` does on the Keras side.
* **Names.** The ONNX input is named ``input_name`` ("input"), the output ``output_name`` (default: the Keras output
  layer's name).
  Intermediate tensors keep the Keras layer names inside tf2onnx's scopes: the output of a layer ``"relu3"`` is
  e.g. ``"functional_1/relu3_1/Relu:0"`` (:func:`layer_tensor` finds it from the layer name).
* **Metadata** (``metadata_props``), as the torch converter writes it: the preprocessing
  (:meth:`onnx_cnnviz.image.Preprocessing.to_metadata`), the class names (``cnnviz.labels``), the input size
  (``cnnviz.input_size``, "HxW", when fixed), ``cnnviz.source`` and ``cnnviz.keras.input_layout`` (the Keras
  model's own layout: "NHWC" when the converter transposed it).
* **A check**: the ONNX model, run by onnxruntime on a random batch of 2, must match ``model(x, training=False)``.

Preprocessing: a preset name of :data:`onnx_cnnviz.image.PRESETS` ("imagenet" = Keras's "torch" mode, "caffe",
"none"), ``"tf"`` (Keras's "tf" mode, ``x / 127.5 - 1``: mean 0.5, std 0.5 on [0, 1] RGB) or a
:class:`~onnx_cnnviz.image.Preprocessing`. Keras models that do their own scaling inside (a ``Rescaling`` layer, the
``include_preprocessing`` of keras.applications) take raw 0..255 pixels: record ``Preprocessing(scale=1.0)``.
When the converted model fixes H and W, the recorded preprocessing resizes images to them (also for "none" and "tf",
whose presets keep an image's own size).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnx_cnnviz.errors import CnnvizError, InputError, ModelLoadError, RuntimeFailure

from .metadata import set_metadata_props

DEFAULT_OPSET = 17
CHECK_SIZE = 224  # H = W of the check batch for a model that accepts any size and was given no input_size
INSTALL_HINT = "pip install 'onnx-cnnviz[keras]'"


def import_tensorflow():
    """TensorFlow and tf2onnx, imported.

    TensorFlow's C++ start-up chatter is silenced (``TF_CPP_MIN_LOG_LEVEL=2``) unless the variable is already set.

    Returns:
        ``(tensorflow, tf2onnx)``.

    Raises:
        InputError: either is missing (the message names the ``keras`` extra).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise InputError(f"converting Keras models needs TensorFlow and tf2onnx ({missing} is not installed): "
                         f"{INSTALL_HINT}.") from None
    return tf, tf2onnx


def _keras():
    tf, _ = import_tensorflow()
    try:
        import keras
    except ImportError:  # TensorFlow without a separate Keras package
        keras = tf.keras
    return keras


def load_keras_model(model_or_path):
    """A Keras model, loaded without compiling when given as a file.

    Custom layers must be registered with ``keras.saving.register_keras_serializable``.

    Args:
        model_or_path: a Keras model (returned as is) or a ``.keras`` / ``.h5`` file.

    Returns:
        The model.

    Raises:
        InputError: not a model, a folder (a SavedModel), a missing file or another suffix.
        ModelLoadError: Keras could not load the file.
    """
    keras = _keras()
    if not isinstance(model_or_path, (str, os.PathLike)):
        if not hasattr(model_or_path, "inputs") or not callable(model_or_path):
            raise InputError(f"expected a Keras model or a .keras / .h5 path, got {type(model_or_path).__name__}.")
        return model_or_path
    path = Path(model_or_path)
    if path.is_dir():
        raise InputError(f"'{path}' is a folder (a TensorFlow SavedModel?): give a Keras model file (.keras or .h5); "
                         "in Python, keras.models.load_model / keras.layers.TFSMLayer then model.save('m.keras').")
    if not path.is_file():
        raise InputError(f"Keras model file '{path}' does not exist.")
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise InputError(f"'{path}': expected a .keras or .h5 Keras model file.")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(f"Keras could not load '{path}' ({type(exc).__name__}: {first}).") from None


#: Input dtypes an image classifier takes: float images, or raw 8-bit pixels scaled inside the graph.
INPUT_DTYPES = ("float16", "float32", "float64", "uint8", "int8")


def _input_dtype(model) -> str:
    """The Keras input's dtype name ("float32", "uint8", ...), one of :data:`INPUT_DTYPES`."""
    dtype = getattr(model.inputs[0], "dtype", None) or "float32"
    name = str(getattr(dtype, "name", dtype))
    if name not in INPUT_DTYPES:
        raise InputError(f"the Keras model's input has dtype {name}, not an image's ({', '.join(INPUT_DTYPES)}): "
                         "take float or uint8 pixels and cast inside the model.")
    return name


def _input_geometry(model, input_size, channels_last_input: bool):
    """``(keras_shape, channels, hw)``: the Keras input shape to trace (batch None), C, and (H, W) or (None, None)."""
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) != 1:
        raise InputError(f"the Keras model must have exactly one (image) input, it has {len(inputs)}"
                         + ("; build it first (call it on an input or start it with keras.Input)" if not inputs
                            else "") + ".")
    shape = tuple(None if d is None else int(d) for d in inputs[0].shape)
    if len(shape) != 4:
        raise InputError(f"the Keras model's input must be a 4-D image batch, got shape {shape}.")
    if channels_last_input:
        (h, w), c = shape[1:3], shape[3]
    else:
        c, (h, w) = shape[1], shape[2:4]
    layout = "NHWC" if channels_last_input else "NCHW"
    if c is None:
        raise InputError(f"the Keras input {shape} ({layout}) has no fixed channel count; if the model is "
                         f"channels-{'first' if channels_last_input else 'last'}, say so "
                         f"(channels_last_input={not channels_last_input}).")
    if input_size is not None:
        want = (int(input_size), int(input_size)) if np.ndim(input_size) == 0 else tuple(int(v) for v in input_size)
        if len(want) != 2 or min(want) < 1:
            raise InputError(f"input_size must be (H, W) or one int, got {input_size!r}.")
        for have, asked, axis in zip((h, w), want, "HW"):
            if have is not None and have != asked:
                raise InputError(f"input_size {want[0]}x{want[1]} but the Keras model fixes {axis}={have} "
                                 f"(input {shape}, {layout}).")
        h, w = want
    trace = (None, h, w, c) if channels_last_input else (None, c, h, w)
    return trace, c, (h, w)


def _resolve_preprocessing(preprocess, hw):
    from onnx_cnnviz.image import Preprocessing, get_preprocessing

    if preprocess is None:
        return None
    if isinstance(preprocess, str) and preprocess.lower() == "tf":
        # keras.applications "tf" mode: x / 127.5 - 1 == (x / 255 - 0.5) / 0.5.
        preprocess = Preprocessing(size=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), order="RGB",
                                   scale=1.0 / 255.0)
    preprocessing = get_preprocessing(preprocess)
    if None not in hw:
        # The converted graph fixes H and W: images are resized to them whatever the preset says.
        preprocessing = get_preprocessing(preprocessing, size=hw)
    return preprocessing


def export(model_or_path, path, input_size=None, opset: int = DEFAULT_OPSET, channels_last_input: bool = True,
           preprocess=None, labels=None, input_name: str = "input", output_name: str | None = None,
           overwrite: bool = False, check: bool = True, metadata: dict | None = None,
           keep_nhwc: bool = False) -> Path:
    """Convert a Keras classifier to ONNX with tf2onnx (the module docstring says what the converted graph looks
    like).

    Args:
        model_or_path: a Keras model (Keras 3 / ``tf.keras``) or a ``.keras`` / ``.h5`` file.
        path: the ``.onnx`` file to write (atomically).
        input_size: (H, W) (an int = square); None: the model's own.
        opset: the ONNX opset for tf2onnx.
        channels_last_input: the Keras model takes NHWC images (the default): the ONNX input becomes NCHW, unless
            ``keep_nhwc``.
        preprocess: a preset name ("imagenet", "caffe", "none", "tf") or a
            :class:`~onnx_cnnviz.image.Preprocessing` recorded in the metadata (None: nothing recorded).
        labels: class names (a list, or a text file, one per line) recorded as ``cnnviz.labels``.
        input_name: the ONNX input's name.
        output_name: the ONNX output's name (default: the Keras output layer's).
        overwrite: replace an existing file (otherwise it is kept and this raises).
        check: compare onnxruntime with the Keras model on a random batch.
        metadata: more ``metadata_props`` entries.
        keep_nhwc: keep the ONNX input NHWC, as plain tf2onnx writes it (onnx_cnnviz still takes NCHW arrays for
            it).

    Returns:
        ``path``.

    Raises:
        InputError: the output exists or lacks ``.onnx``, a model that is not a one-input image classifier, a bad
            ``input_size``, or labels that do not match the classes.
        RuntimeFailure: tf2onnx failed, or the converted model does not run or differs from Keras.

    Example:
        ```python
        from onnx_cnnviz.converters import keras as convert
        convert.export("model.keras", "model.onnx", preprocess="tf")
        ```
    """
    import onnx

    from onnx_cnnviz.report import LABELS_KEY, read_labels, write_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: give the output a .onnx suffix.")
    tf, tf2onnx = import_tensorflow()
    keras = _keras()
    if keep_nhwc and not channels_last_input:
        raise InputError("keep_nhwc keeps a channels-last input as it is: a channels-first model "
                         "(channels_last_input=False) has none to keep; drop one of the two.")
    model = load_keras_model(model_or_path)
    trace_shape, channels, hw = _input_geometry(model, input_size, channels_last_input)
    dtype = _input_dtype(model)
    transpose_input = channels_last_input and not keep_nhwc
    preprocessing = _resolve_preprocessing(preprocess, hw)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels)

    check_hw = tuple(CHECK_SIZE if v is None else v for v in hw)
    out_shape = _output_shape(model)
    if len(out_shape) != 2:
        raise InputError(f"the Keras model must return one (N, K) array of class scores; its output has shape "
                         f"{out_shape}.")
    if labels is not None and out_shape[1] is not None and len(labels) != out_shape[1]:
        raise InputError(f"{len(labels)} labels for a model with {out_shape[1]} classes.")

    output_name = output_name or _output_layer_name(model)
    spec = (tf.TensorSpec(trace_shape, tf.as_dtype(dtype), name=input_name),)

    # tf2onnx's from_keras names outputs from ``model.output_names``, which Keras 3 Sequential models fill with
    # internal tensor names it then cannot find (KeyError 'keras_tensor_N'); tracing the call ourselves, with a dict
    # output, works for every model and names the ONNX output after the dict key.
    @tf.function(input_signature=spec)
    def serve(x):
        return {output_name: model(x, training=False)}

    try:
        model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=int(opset),
                                                       inputs_as_nchw=[input_name] if transpose_input else None)
    except CnnvizError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise RuntimeFailure(f"tf2onnx could not convert the Keras model: {type(exc).__name__}: {first}") from exc
    _inline_captured_constants(model_proto, _captured_constants(serve, spec), input_name)
    _name_batch_dimension(model_proto)
    if model_proto.producer_version.endswith(" None"):  # tf2onnx appends its git hash, None in wheels
        model_proto.producer_version = model_proto.producer_version[:-len(" None")]

    props = {}
    if preprocessing is not None:
        props.update(preprocessing.to_metadata())
    if labels is not None:
        props[LABELS_KEY] = "\n".join(str(v) for v in labels)
    if None not in hw:
        props["cnnviz.input_size"] = f"{hw[0]}x{hw[1]}"
    props["cnnviz.keras.input_layout"] = "NHWC" if channels_last_input else "NCHW"
    source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else f"model {model.name!r}"
    props["cnnviz.source"] = (f"tf2onnx {tf2onnx.__version__} conversion (TensorFlow {tf.__version__}, Keras "
                              f"{getattr(keras, '__version__', '?')}) of Keras {source}"
                              + ("; input transposed NHWC -> NCHW" if transpose_input else "")
                              + ("; input kept NHWC" if keep_nhwc else ""))
    props.update(metadata or {})
    set_metadata_props(model_proto, props)
    onnx.checker.check_model(model_proto)
    if check:
        _check_outputs(model, model_proto, channels, check_hw, input_name, channels_last_input, keep_nhwc, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, model_proto.SerializeToString(), overwrite=overwrite)
    return path


def _to_numpy(value) -> np.ndarray:
    """A Keras / TensorFlow output as numpy (``.numpy()``: np.asarray on an EagerTensor warns under numpy 2)."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _output_shape(model) -> tuple:
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        raise InputError(f"the Keras model must have exactly one output (the class scores), it has {len(outputs)}.")
    return tuple(None if d is None else int(d) for d in outputs[0].shape)


def _output_layer_name(model) -> str:
    """The name of the layer producing the Keras model's (single) output, "output" when Keras does not say."""
    outputs = list(getattr(model, "outputs", None) or [])
    history = getattr(outputs[0], "_keras_history", None) if len(outputs) == 1 else None
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    if layer is None and getattr(model, "layers", None):
        layer = model.layers[-1]
    return str(getattr(layer, "name", None) or "output")


def _captured_constants(function, spec) -> dict:
    """``{placeholder name: value}`` of the constant tensors a traced call captures.

    A layer that keeps plain tensors rather than variables (Keras 3's ``Normalization`` built with ``mean``/
    ``variance``, as in keras.applications EfficientNet) makes them captured inputs of the concrete function.
    tf2onnx freezes captured *variables* but lists captured constants as graph inputs of their own (e.g.
    ``.../normalization_1/Sub/y:0``), so the model would not run with the image alone; their values are here."""
    import tensorflow as tf

    concrete = function.get_concrete_function(*spec)  # the same trace tf2onnx converts (tf.function caches it)
    placeholders = list(concrete.inputs)[len(concrete.inputs) - len(concrete.captured_inputs):]
    return {placeholder.name: value.numpy() for placeholder, value in zip(placeholders, concrete.captured_inputs)
            if value.dtype != tf.resource and hasattr(value, "numpy")}


def _inline_captured_constants(model_proto, constants: dict, input_name: str) -> None:
    """Turn the graph inputs tf2onnx made of captured constants into initializers; any other extra input is an
    error (the converted model must take the image alone)."""
    from onnx import numpy_helper

    graph = model_proto.graph
    kept = []
    for value in graph.input:
        if value.name in constants:
            graph.initializer.append(numpy_helper.from_array(np.asarray(constants[value.name]), value.name))
        else:
            kept.append(value)
    extra = [value.name for value in kept if value.name != input_name]
    if extra:
        raise RuntimeFailure(f"tf2onnx left inputs other than the image in the converted model ({', '.join(extra)}); "
                             "the Keras model may read tensors it does not own.")
    del graph.input[:]
    graph.input.extend(kept)


def _name_batch_dimension(model_proto, name: str = "N") -> None:
    """tf2onnx names the free batch dimension "unk__N"; call it ``N`` on the graph's inputs and outputs."""
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = name


def _check_batch(channels, hw, dtype: str, rng) -> np.ndarray:
    """A random NCHW batch of 2 in the input's dtype: standard normal floats, or integer pixels over the dtype's
    whole range (a uint8 model's preprocessing sees 0..255, as from an image file)."""
    shape = (2, channels, *hw)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _check_outputs(model, model_proto, channels, hw, input_name, channels_last_input, keep_nhwc=False,
                   dtype="float32", rtol=1e-3, atol=1e-5) -> None:
    import onnxruntime as ort

    x = _check_batch(channels, hw, dtype, np.random.default_rng(0))  # NCHW
    keras_x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last_input else x
    onnx_x = keras_x if keep_nhwc else x
    try:
        expected = _to_numpy(model(keras_x, training=False))
    except Exception as exc:  # noqa: BLE001
        hint = ("; TensorFlow's CPU kernels do not run channels-first convolutions: convert without the comparison "
                "(check=False, --no-check)" if not channels_last_input else "")
        raise RuntimeFailure(f"the Keras model does not run on a {keras_x.shape} input ({type(exc).__name__}: "
                             f"{(str(exc).strip().splitlines() or [''])[0][:200]}){hint}.") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: onnx_x})[0]
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"onnxruntime cannot run the converted model: {str(exc)[:300]}") from None
    if got.shape != expected.shape:
        raise RuntimeFailure(f"the converted model returns shape {got.shape} for a batch of 2, Keras "
                             f"{expected.shape}: the batch dimension did not convert as dynamic.")
    err = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if err > rtol and float(np.abs(got - expected).max()) > atol:
        raise RuntimeFailure(f"the converted model differs from Keras (max relative error {err:.2e}); the model may "
                             "use ops tf2onnx does not convert faithfully.")


def layer_tensor(onnx_model, layer_name: str) -> str:
    """The ONNX tensor holding the output of a Keras layer in a converted model.

    tf2onnx names tensors ``<scope>/<layer>_<k>/<Op>:0``; of the tensors under the layer's scope, the last one in
    graph order is the layer's output (for ``Conv2D(activation="relu")`` the Relu after the convolution).

    Args:
        onnx_model: an :class:`onnx_cnnviz.Model` (its candidate ``layers`` are searched) or an ONNX path /
            ModelProto (every node output is searched).
        layer_name: the Keras layer's name.

    Returns:
        The tensor's name.

    Raises:
        InputError: no tensor of that layer in the model.
    """
    import re

    if hasattr(onnx_model, "layers") and hasattr(onnx_model, "score_name"):
        names = [layer.name for layer in onnx_model.layers]
    else:
        import onnx

        proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
        names = [out for node in proto.graph.node for out in node.output]
    scope = re.compile(rf"(^|/){re.escape(layer_name)}(_\d+)?/")
    found = [n for n in names if scope.search(n)]
    if not found:
        raise InputError(f"no tensor of the Keras layer {layer_name!r} in the converted model (tf2onnx may have "
                         "fused it into its neighbour); the tensors are named like "
                         f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}.")
    return found[-1]


__all__ = ["export", "load_keras_model", "layer_tensor", "import_tensorflow"]
