"""onnxruntime sessions: execution providers, threads, batching.

``device="auto"`` uses CUDA only when a CUDA session can really be created (the provider library and its CUDA/cuDNN
dependencies load and a GPU is present), and falls back to the CPU silently: onnxruntime-gpu prints a red error when
asked for CUDA on a machine without it, so we check before asking.

``device="openvino"`` runs the graphs on onnxruntime's OpenVINO execution provider (the ``onnxruntime-openvino``
package, which replaces ``onnxruntime``/``onnxruntime-gpu`` in its environment) on the CPU, at float32
(:data:`OPENVINO_OPTIONS`); nodes it declines run on the CPU provider. :attr:`Session.provider` names the provider a
session runs on, :func:`device_of` the device of a provider list.

Sessions of one model share its weights (:class:`SharedWeights`, one per :class:`~onnx_cnnviz.Model`). Every rewritten
graph reaches onnxruntime with its large float Conv / ConvTranspose / Gemm / MatMul weights (the original ones and those
a rewrite derives, such as the backward pass's flipped kernels) replaced by empty external-data placeholders; the
session gets them from the model's one copy through ``SessionOptions.add_external_initializers`` (what the graph
optimisers read while the session is built, then dropped) and, on the CPU, ``SessionOptions.add_initializer`` (what the
kernels read at run time, in place). Such sessions also run without weight pre-packing (a pre-packed weight is a private
copy per session: :data:`PREPACK_SHARED`) and without a CPU memory arena of their own (an arena keeps the peak of its
session's largest run reserved until the session is dropped: one per session adds up). They draw their buffers from one
arena of the whole process instead (:data:`SHARED_ARENA`, registered once in onnxruntime's environment,
``session.use_env_allocators``): it holds the peak of the largest single run of any session, reused by every run after
it; graphs of 1 GiB of activations per image and more run without it (:data:`ARENA_MAX_ACTIVATION_BYTES`). Without any
arena every run's buffers are fresh pages from the system, faulted in on every run (ConvNeXt-tiny's saliency at batch 1:
1.39x the unshared time without, 1.08x with the process's arena; see :data:`ARENA_MAX_ACTIVATION_BYTES`). The first
session of a model costs its weights once, each further one only its own derived buffers: on VGG-16 (528 MB) five
methods peak at 3.4 GB instead of 11 GB, on ConvNeXt-tiny at 0.90 GB instead of 2.30
(``benchmarks/memory_sessions.py``). The price left is pre-packing (:data:`PREPACK_SHARED`): onnxruntime packs the
constant B of every float MatMul/Gemm once per session, and a shared weight only as a private copy, so shared sessions
run unpacked and MLAS packs B again on every call. MatMul-heavy models pay for it at small batches (ConvNeXt-tiny at
batch 1: forward 1.09-1.15x, Grad-CAM 1.10-1.12x the unshared time); convolutional ones do not (ResNet-50 within 1-4%:
fp32 Conv weights are not pre-packed on x86). Building a session is faster. ``CNNVIZ_SHARE_WEIGHTS=0`` (or
``runtime.SHARE_WEIGHTS = False`` before the sessions are built) restores onnxruntime's defaults: one private copy of
the weights per session. On CUDA the host copy is not kept, but each session still uploads its own device copy:
onnxruntime's Python API takes shared initializers only over memory the caller owns, which it cannot allocate on a GPU.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import weakref

import numpy as np
import onnx
from onnx import TensorProto

from . import settings
from .errors import InputError, MissingDependencyError, RuntimeFailure
from .graph import held

DEVICES = ("auto", "cpu", "cuda", "openvino")
#: The execution provider each explicit device asks for first (the CPU provider always follows, for any node the first
#: one declines).
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "openvino": "OpenVINOExecutionProvider"}

#: Sessions built with a :class:`SharedWeights` share the weights it holds. None: ``CNNVIZ_SHARE_WEIGHTS`` decides
#: (on unless 0/false/no/off, read when a session is built); False: one private copy of the weights per session,
#: onnxruntime's default.
SHARE_WEIGHTS: bool | None = None


def share_weights() -> bool:
    """Whether sessions share their model's weights: :data:`SHARE_WEIGHTS` when set, else ``CNNVIZ_SHARE_WEIGHTS``
    (:mod:`onnx_cnnviz.settings`, on by default).

    Raises:
        InputError: the environment variable is not an on/off word.
    """
    return bool(settings.SHARE_WEIGHTS.read()) if SHARE_WEIGHTS is None else bool(SHARE_WEIGHTS)
#: Lean sessions on the CPU (those sharing weights) draw their buffers from one process-wide CPU arena instead of none
#: (see the module's notes); False: no arena at all, every run's buffers freed when it ends (the least memory between
#: runs, slower).
SHARED_ARENA = True
#: Lean sessions over a graph whose float tensors hold this many bytes per image or more (as declared in its
#: ``value_info``: :func:`activation_bytes_per_image`) run without the process's arena: their buffers go back to the
#: system after each run. The arena grows by each request it cannot place in a free chunk and never shrinks, so runs
#: of different graphs over large activations fragment it to about twice the largest run (mvitv2_base_cls, 1.2 GB
#: of float tensors per image: 3.95 GB resident after five methods at batch 2, 2.27 GB without the arena, each
#: method as fast on repeated calls; issue 26). Smaller models keep it: there it saves the page faults of fresh
#: buffers every run. The declared tensors of a gradient graph are those of the forward pass and of the backward
#: pass, about twice the forward's: at 512 MiB, ConvNeXt-tiny's forward (306 MiB) kept the arena but its input-gradient
#: graph (531 MiB) lost it, and every saliency run faulted in 136 MiB of fresh pages (34,921 minor faults a run, none
#: with an arena): 1.39x the unshared time at batch 1, against 1.08x at 1 GiB (one thread, CPU time, best of 10
#: interleaved rounds; five methods then peak at 0.90 GB instead of 0.80, unshared 2.30; issue 25).
ARENA_MAX_ACTIVATION_BYTES = 2 ** 30

#: Whether a session's intra-op threads spin between its parallel sections instead of sleeping. Off: a model's
#: sessions run one after another (a forward session, then a backward one, then a window's), and each session has
#: its own thread pool, whose threads went on spinning for a while after its run, taking the cores the next
#: session's threads needed. Measured on 2 cores (interleaved, best of 7): Grad-CAM of 10 yolov8n detections at their
#: own level 2.30-2.47x -> 1.83-1.85x a forward; a single session is unaffected (ResNet-18 forward, Grad-CAM and
#: saliency at batch 1 and 8 within the run-to-run spread either way).
SPINNING = False

#: Lean sessions on the CPU let onnxruntime pre-pack the shared weights (MLAS packs the constant B of every float
#: MatMul and Gemm once per session into its own layout; Conv weights are not pre-packed on x86). onnxruntime keeps a
#: packed copy per session: its Python API (1.31) has no way to hand sessions a common pre-packed-weights container
#: (the C API's ``CreateSessionWithPrepackedWeightsContainer``; in ``session_state.cc``
#: ``PrepackConstantInitializedTensors`` packs a shared initializer into the session's own allocator unless a
#: container was given), so off by default. On, the last cost of sharing goes: ConvNeXt-tiny (MatMul-heavy) at batch
#: 1 ran its forward 0.95-1.02x, saliency 0.98-1.02x and Grad-CAM 0.97-0.99x the unshared time, against 1.09-1.15x,
#: 1.08-1.10x and 1.10-1.12x off (batch 8 off: 1.04x, 1.01x, 1.06x); five methods peaked at 1.48 GB instead of 0.90
#: (unshared 2.30). ResNet-50 (convolutions) is as fast either way, within 1-4% of unshared (one thread, CPU time,
#: best of 8-10 interleaved rounds, two runs; ``benchmarks/prepack_sharing.py``, ``benchmarks/memory_sessions.py``;
#: issue 25).
PREPACK_SHARED = False
_arena_lock = threading.Lock()
_arena_registered = False


def _register_shared_arena() -> bool:
    """Register the process's one CPU arena in onnxruntime's environment (once); False where this onnxruntime cannot.

    The arena grows by what each request asks (``arena_extend_strategy`` 1, kSameAsRequested: the default rounds each
    extension up to a power of two) and is never shrunk: it keeps the largest run's peak for the next run."""
    global _arena_registered
    with _arena_lock:
        if _arena_registered:
            return True
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
        except Exception:  # an onnxruntime without the API: lean sessions run without an arena
            return False
        _arena_registered = True
        return True


#: Initializers smaller than this stay inside each graph (biases, shape constants: nothing worth sharing).
SHARED_MIN_BYTES = 16 * 1024
#: The only places a shared initializer may be consumed: weight inputs of the ops below. onnxruntime's optimisers
#: rewrite some other constants in place under their own name (the transpose optimiser transposes or reshapes an
#: initializer feeding an element-wise op, say); a session would then read the original shared values under the
#: rewritten name. Conv/Gemm/MatMul weights are only ever rewritten into new, differently named initializers (Conv+BN
#: fusion, NCHWc reordering), so sharing them is safe.
_WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}
#: Float weights only: half-precision and quantised weights go through layout rewrites (NHWC kernels) on some CPUs.
_SHARED_TYPES = {TensorProto.FLOAT: np.dtype("<f4"), TensorProto.DOUBLE: np.dtype("<f8")}
#: Where a shared initializer's placeholder says its data lie; never read (the data are handed over in memory), and if
#: onnxruntime ever tried, the file's absence would fail the session, which is then built the plain way.
_PLACEHOLDER = "cnnviz-shared-weight.bin"


#: onnxruntime graph optimisers that change results. ``Pad_Fusion`` folds a zero ``Pad`` into the ``MaxPool`` after
#: it, which pads with -inf instead: the max of a border window that held padded zeros becomes negative (onnxruntime
#: 1.31; BiT's stem is exactly Pad(0) -> MaxPool, and its scores came out 4% off). It only saves a copy.
DISABLED_OPTIMIZERS = ["Pad_Fusion"]
#: Also off for a model whose weights are held outside its graph (graph/held.py, 256 MiB and more): ``ConvBNFusion``
#: and ``NchwcTransformer`` fold the weights into new ones (a convolution with its BatchNorm, kernels reordered for
#: NCHWc kernels), a private copy of every Conv weight in every session where the held ones are read in place
#: (timm's VGG-16 writes its 400 MB fully-connected layers as Convs: 8 GB by the second method with them, 1.9 GB held
#: without; issue 26). Below that size the copies cost little and NCHWc is worth keeping: off, a ResNet-50 forward
#: took 1.16x (batch 1) and 1.30x (batch 8) as long on 2 cores (interleaved runs, best of 12).
HELD_DISABLED_OPTIMIZERS = DISABLED_OPTIMIZERS + ["ConvBNFusion", "NchwcTransformer"]


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when onnxruntime can create a working CUDA session here. Never prints."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    if not _gpu_present():
        return False
    try:  # torch's or the system's CUDA libraries, where onnxruntime knows how to find them
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls(directory="")
    except Exception:
        pass
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in session.get_providers()


def _gpu_present() -> bool:
    """A CUDA driver that reports at least one device (checked without onnxruntime, so nothing is logged)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return False
            count = ctypes.c_int(0)
            return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
        except Exception:
            return False
    return False


def openvino_available() -> bool:
    """True when this onnxruntime has the OpenVINO execution provider (the ``onnxruntime-openvino`` package)."""
    import onnxruntime as ort

    return PROVIDERS["openvino"] in ort.get_available_providers()


def providers_for(device: str) -> list[str]:
    """The onnxruntime execution providers for ``device``, best first.

    Args:
        device: "auto" (CUDA where a CUDA session can really be made, else the CPU), "cpu", "cuda" or "openvino"
            (onnxruntime's OpenVINO execution provider on the CPU, from the ``onnxruntime-openvino`` package, which
            replaces ``onnxruntime``/``onnxruntime-gpu`` in its environment).

    Returns:
        Provider names for ``onnxruntime.InferenceSession``; ``CPUExecutionProvider`` last.

    Raises:
        InputError: an unknown device.
        MissingDependencyError: "openvino" without the OpenVINO execution provider installed.
        RuntimeFailure: "cuda" where CUDA cannot be used.
    """
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {device!r}.")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "openvino":
        if not openvino_available():
            import onnxruntime as ort

            raise MissingDependencyError(
                "device='openvino' needs onnxruntime's OpenVINO execution provider, which this onnxruntime "
                f"{ort.__version__} does not have (it has {', '.join(ort.get_available_providers())}). Install it "
                "in an environment of its own: pip install onnxruntime-openvino (it replaces onnxruntime and "
                "onnxruntime-gpu, which must not be installed beside it); or use device='cpu'.")
        return [PROVIDERS["openvino"], "CPUExecutionProvider"]
    if cuda_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeFailure(
            "device='cuda' was asked for but onnxruntime cannot use CUDA here (no GPU, no onnxruntime-gpu, or "
            "missing CUDA/cuDNN libraries). Use device='auto' or 'cpu'.")
    return ["CPUExecutionProvider"]


def device_of(providers) -> str:
    """The device a list of providers (a session's, or :func:`providers_for`'s) runs on: "cuda", "openvino" or
    "cpu", after the first provider."""
    first = providers[0] if providers else "CPUExecutionProvider"
    first = first[0] if isinstance(first, tuple) else first
    return next((device for device, name in PROVIDERS.items() if name == first), "cpu")


#: Options of the OpenVINO execution provider (onnxruntime-openvino): the CPU plugin at full float32 precision. The
#: plugin's own default on CPUs with bfloat16 instructions (AVX512_BF16, AMX) computes in bfloat16, about 3 significant
#: digits: gradients and maps would no longer match the CPU provider's. ``precision="ACCURACY"`` keeps the model's
#: own precision (float32 here) and turns that down-conversion off.
OPENVINO_OPTIONS = {"device_type": "CPU", "precision": "ACCURACY"}


def session_providers(providers: list[str], threads: int | None = None) -> list:
    """``providers`` as ``onnxruntime.InferenceSession`` takes them, with the options a provider needs here: the
    OpenVINO provider gets :data:`OPENVINO_OPTIONS` and the session's thread count (its own thread pool does not
    read the session's ``intra_op_num_threads``)."""
    out = []
    for name in providers:
        if name == PROVIDERS["openvino"]:
            out.append((name, {**OPENVINO_OPTIONS, "num_of_threads": str(threads or default_threads())}))
        else:
            out.append(name)
    return out


def for_openvino(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` rewritten where OpenVINO's ONNX reader (2025.4, through onnxruntime-openvino 1.24) reads it wrong or
    not at all (a copy; ``model`` itself unchanged, and returned as it is when there is nothing to change).

    * A ``HardSigmoid`` whose ``beta`` is exactly 0 is taken for one without ``beta``, that is 0.5:
      ``HardSigmoid(0)`` comes out 0.5 instead of 0 (``Selu`` with ``alpha=0`` likewise). The backward graph's ReLU
      masks are ``HardSigmoid(y; alpha=2**126, beta=0)`` (graph/autodiff/rules/activations.py), so every gradient
      through a ReLU leaked half of it where the ReLU was off. ``beta = -1e-30`` gives the same float32 results (0 at
      0; ``alpha * x - 1e-30 == alpha * x`` for ``|alpha * x| >= 1e-23``, and a difference below 1e-30 under that).
    * A ``LayerNormalization`` with its optional ``Mean`` and ``InvStdDev`` outputs (which the backward rule reads:
      graph/autodiff/rules/normalization.py) is refused ("used for training"): it keeps its one output ``Y`` and the
      two statistics are computed beside it, ``Mean = ReduceMean(X)`` and ``InvStdDev = 1 / sqrt(ReduceMean((X -
      Mean)^2) + epsilon)`` over the normalised axes (``axis`` to the last), as the operator defines them.
    * A ``Gemm`` with ``transB=1`` whose ``B`` is a weight another node (the forward ``MatMul``) also reads comes out
      wrong, as if untransposed (the MatMul rule's ``dA = G B^T`` reads the weight in place so: rules/linear.py).
      ``B`` goes through a ``Transpose`` node instead, into a ``MatMul`` (a Gemm without ``C``, ``alpha`` or
      ``transA``, as that rule writes; a Gemm over the transposed weight is read wrong too) or a Gemm with
      ``transB=0``.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def misread(node) -> bool:
        return (node.op_type == "HardSigmoid" and node.domain in ("", "ai.onnx")
                and any(a.name == "beta" and a.f == 0.0 for a in node.attribute))

    def statistics(node) -> bool:
        return (node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx")
                and any(o for o in node.output[1:]))

    def transposed_gemm(node) -> bool:
        return (node.op_type == "Gemm" and node.domain in ("", "ai.onnx")
                and any(a.name == "transB" and a.i == 1 for a in node.attribute))

    if not any(misread(node) or statistics(node) or transposed_gemm(node) for node in model.graph.node):
        return model
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output) if v.type.tensor_type.HasField("shape")}
    out = onnx.ModelProto()
    held.copy_fields(model, out, "graph")
    held.copy_fields(model.graph, out.graph, "node")
    for k, node in enumerate(model.graph.node):
        copy = out.graph.node.add()
        copy.CopyFrom(node)
        if misread(copy):
            for attr in copy.attribute:
                if attr.name == "beta":
                    attr.f = -1e-30
        elif transposed_gemm(copy):
            transposed = f"cnnviz/ov_gemm{k}/b_t"
            out.graph.node.append(onnx.helper.make_node("Transpose", [copy.input[1]], [transposed], perm=[1, 0]))
            copy.input[1] = transposed
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in copy.attribute}
            if len([i for i in copy.input if i]) == 2 and attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transA"):
                copy.op_type = "MatMul"  # a Gemm over the transposed weight is read wrong as well
                del copy.attribute[:]
            else:
                for attr in copy.attribute:
                    if attr.name == "transB":
                        attr.i = 0
        elif statistics(copy):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
            if axis >= 0:
                rank = ranks.get(node.input[0], ranks.get(node.output[0]))
                if rank is None:  # the axes cannot be told: left as it is (OpenVINO then refuses the graph)
                    continue
                axis -= rank
            axes = list(range(axis, 0))
            mean, inv_std = (list(node.output) + ["", ""])[1:3]
            del copy.output[1:]
            prefix = f"cnnviz/ov_ln{k}/"
            mean = mean or prefix + "mean"
            reduce_args = {"axes": axes, "keepdims": 1}
            axes_input = []
            if opset >= 18:
                out.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), prefix + "axes"))
                axes_input, reduce_args = [prefix + "axes"], {"keepdims": 1}
            make = onnx.helper.make_node
            extra = [make("ReduceMean", [node.input[0]] + axes_input, [mean], **reduce_args),
                     make("Sub", [node.input[0], mean], [prefix + "centred"]),
                     make("Mul", [prefix + "centred", prefix + "centred"], [prefix + "square"]),
                     make("ReduceMean", [prefix + "square"] + axes_input, [prefix + "var"], **reduce_args)]
            out.graph.initializer.append(onnx.numpy_helper.from_array(np.array(eps, np.float32), prefix + "eps"))
            if inv_std:
                extra += [make("Add", [prefix + "var", prefix + "eps"], [prefix + "var_eps"]),
                          make("Sqrt", [prefix + "var_eps"], [prefix + "std"]),
                          make("Reciprocal", [prefix + "std"], [inv_std])]
            out.graph.node.extend(extra)
    return out


def available_memory() -> int | None:
    """Bytes of physical memory available now (Linux/Unix sysconf), or None where the platform cannot tell."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (affinity-aware), as onnxruntime would pick by default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def activation_bytes_per_image(model: onnx.ModelProto) -> int:
    """Bytes of the float tensors ``model`` declares in its ``value_info`` at one image (every dimension without a
    size counted as 1): what one run's buffers hold at most, per image, as far as the graph says."""
    total = 0
    for value in model.graph.value_info:
        ttype = value.type.tensor_type
        dtype = _SHARED_TYPES.get(ttype.elem_type)
        if dtype is None or not ttype.HasField("shape"):
            continue
        total += int(np.prod([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                              for d in ttype.shape.dim], dtype=np.int64)) * dtype.itemsize
    return total


class _Weight:
    """One shared tensor: its bytes, a read-only array over them and the OrtValue over that array (no copies)."""
    __slots__ = ("data", "array", "value", "__weakref__")

    def __init__(self, data: bytes, dtype: np.dtype, dims):
        import onnxruntime as ort

        self.data = data
        self.array = np.frombuffer(data, dtype=dtype).reshape(dims)
        self.value = ort.OrtValue.ortvalue_from_numpy(self.array)

    @classmethod
    def over(cls, array: np.ndarray) -> _Weight:
        """A weight over an array held outside the graph (graph/held.py), read in place."""
        array = np.ascontiguousarray(array)
        return cls(memoryview(array).cast("B"), array.dtype, array.shape)


class SharedWeights:
    """The large weights of one model's graphs, each held once and handed to every session that uses it.

    A tensor is found by its content (type, shape and bytes), not its name, so constants a rewrite derives from the
    weights (the backward graph's flipped Conv kernels, say) are shared between every graph that holds them too. The
    store keeps a tensor only as long as a session uses it (sessions hold their tensors; the store holds weak
    references), so evicted sessions free what only they needed.
    """

    def __init__(self):
        self._by_shape: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def get(self, tensor: TensorProto, dtype: np.dtype) -> _Weight | None:
        """The shared copy of ``tensor``'s data (made on first sight), or None if its data cannot be read as
        ``dtype``."""
        dims = tuple(int(d) for d in tensor.dims)
        size = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        data = tensor.raw_data
        if not data:
            from onnx import numpy_helper

            data = numpy_helper.to_array(tensor).astype(dtype, copy=False).tobytes()
        if len(data) != size:
            return None
        key = (int(tensor.data_type), dims)
        with self._lock:
            refs = self._by_shape.setdefault(key, [])
            live = [r for r in refs if r() is not None]
            refs[:] = live
            for ref in live:
                weight = ref()
                if weight is not None and weight.data == data:  # memcmp: stops at the first difference
                    return weight
            weight = _Weight(data, dtype, dims)
            refs.append(weakref.ref(weight))
            return weight

    def _live(self) -> list:
        with self._lock:
            return [w for refs in self._by_shape.values() for w in (r() for r in refs) if w is not None]

    def __len__(self) -> int:
        """How many tensors are held now."""
        return len(self._live())

    @property
    def nbytes(self) -> int:
        """Bytes held now (each tensor counted once however many sessions use it)."""
        return sum(len(w.data) for w in self._live())


def _weight_slot_names(graph: onnx.GraphProto) -> set:
    """Names consumed only as weight inputs of the ops in ``_WEIGHT_SLOTS`` (never by another op, a subgraph, as a
    graph input or output)."""
    good, bad = set(), set()

    def visit(g: onnx.GraphProto, top: bool) -> None:
        for node in g.node:
            slots = _WEIGHT_SLOTS.get(node.op_type, ()) if top and node.domain in ("", "ai.onnx") else ()
            for i, name in enumerate(node.input):
                (good if i in slots else bad).add(name)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub, False)
                    bad.update(o.name for o in sub.output)

    visit(graph, True)
    bad.update(i.name for i in graph.input)
    bad.update(o.name for o in graph.output)
    return good - bad


def split_weights(model: onnx.ModelProto, weights: SharedWeights) -> tuple[bytes, dict]:
    """``model`` serialised with its shareable weights replaced by external-data placeholders, and those weights
    (name -> :class:`_Weight`) from ``weights``. ``model`` itself is left as it is."""
    if sys.byteorder != "little":  # raw_data is little-endian; the arrays would need a byte swap
        return model.SerializeToString(), {}
    graph = model.graph
    candidates = _weight_slot_names(graph)
    shell = onnx.ModelProto()
    held.copy_fields(model, shell, "graph")
    held.copy_fields(graph, shell.graph, "initializer")
    shared = {}
    for tensor in graph.initializer:
        if held.is_held(tensor):  # already a placeholder; shared in place where a weight may be
            shell.graph.initializer.append(tensor)
            if tensor.name in candidates and tensor.data_type in _SHARED_TYPES:
                shared[tensor.name] = _Weight.over(held.value(tensor))
            continue
        dtype = _SHARED_TYPES.get(tensor.data_type)
        weight = None
        if (dtype is not None and tensor.name in candidates and tensor.data_location != TensorProto.EXTERNAL
                and int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize >= SHARED_MIN_BYTES):
            weight = weights.get(tensor, dtype)
        if weight is None:
            shell.graph.initializer.append(tensor)
            continue
        shared[tensor.name] = weight
        placeholder = shell.graph.initializer.add()
        placeholder.name = tensor.name
        placeholder.data_type = tensor.data_type
        placeholder.dims.extend(tensor.dims)
        placeholder.data_location = TensorProto.EXTERNAL
        for key, value in (("location", _PLACEHOLDER), ("offset", "0"), ("length", str(len(weight.data)))):
            entry = placeholder.external_data.add()
            entry.key, entry.value = key, value
    return shell.SerializeToString(), shared


def read_in_place(options, names: list[str], values: list) -> None:
    """Have a CPU session built with ``options`` read the initializers ``names`` from ``values`` (OrtValues over
    memory the caller keeps alive as long as the session), in place; onnxruntime's pre-packing off unless
    :data:`PREPACK_SHARED` (a packed copy would be private to the session)."""
    if not PREPACK_SHARED:
        options.add_session_config_entry("session.disable_prepacking", "1")
    for name, value in zip(names, values):
        options.add_initializer(name, value)


class Session:
    """One onnxruntime session over a (rewritten) graph.

    With ``weights`` (the model's :class:`SharedWeights`) the session takes its large weights from there instead of
    loading a private copy (see the module's notes); ``model`` is not changed and need not be kept.
    """

    def __init__(self, model: onnx.ModelProto, providers: list[str], threads: int | None = None,
                 weights: SharedWeights | None = None):
        import onnxruntime as ort

        if PROVIDERS["openvino"] in providers:
            model = for_openvino(model)
        self._session = None
        self.shared: tuple = ()  # the shared weights this session reads: kept alive as long as the session
        lean = weights is not None and share_weights()
        self.lean = lean
        arena = not lean or activation_bytes_per_image(model) < ARENA_MAX_ACTIVATION_BYTES
        #: Whether a lean session draws its buffers from the process's arena (False: from the system, each run's
        #: returned when it ends).
        self.process_arena = lean and arena and SHARED_ARENA
        disabled = HELD_DISABLED_OPTIMIZERS if held.any_held(model) else DISABLED_OPTIMIZERS
        if lean and hasattr(ort.SessionOptions, "add_external_initializers"):
            try:
                payload, shared = split_weights(model, weights)
            except Exception:
                payload, shared = None, {}
            if shared:
                options = self._options(threads, lean, arena)
                names, values = list(shared), [w.value for w in shared.values()]
                # What the optimisers read while the session is built (copied into its graph, then dropped) ...
                options.add_external_initializers(names, values)
                held.add_to(model, options, skip=shared)  # held weights that are not shared: copied in
                in_place = providers[0] == "CPUExecutionProvider"
                if in_place:
                    # ... and what the kernels read at run time, in place (the OrtValues must outlive the session).
                    # On CUDA the kernels read device memory: onnxruntime's Python API only accepts OrtValues over
                    # memory the caller owns, which it cannot allocate on a GPU, so each CUDA session uploads its own
                    # device copy, as before, and keeps no host copy.
                    read_in_place(options, names, values)
                try:
                    self._session = ort.InferenceSession(payload, options,
                                                         providers=session_providers(providers, threads),
                                                         disabled_optimizers=disabled)
                    if in_place:
                        self.shared = tuple({id(w): w for w in shared.values()}.values())
                except Exception:
                    self._session = None  # built the plain way below: same graph, a private copy of the weights
            del payload
        if self._session is None:
            try:
                self._session = held.session(model, self._options(threads, lean, arena),
                                             session_providers(providers, threads), disabled_optimizers=disabled)
            except Exception as exc:
                raise RuntimeFailure(f"onnxruntime could not load the rewritten graph: {str(exc)[:500]}") from None
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.providers = self._session.get_providers()
        #: The execution provider the session runs on (its first one; nodes that provider declines run on the CPU
        #: provider): "CPUExecutionProvider", "CUDAExecutionProvider" or "OpenVINOExecutionProvider".
        self.provider = self.providers[0]

    lean = False  # set per session in __init__

    @staticmethod
    def _options(threads: int | None, lean: bool = False, arena: bool = True):
        """Session options; ``lean``: no CPU memory arena of the session's own (with several sessions per model, each
        arena would keep the peak of its own largest run), but the process's one arena (:data:`SHARED_ARENA`, unless
        ``arena`` is False: a graph of large activations, see :data:`ARENA_MAX_ACTIVATION_BYTES`), or none (then the
        buffers of a run go back to the system when it ends)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are raised as RuntimeFailure; onnxruntime must not print them
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPINNING else "0")
        if lean:
            if SHARED_ARENA and arena and _register_shared_arena():
                # the process's one arena (registered in onnxruntime's environment) instead of one per session
                options.add_session_config_entry("session.use_env_allocators", "1")
            else:
                options.enable_cpu_mem_arena = False
        return options

    @property
    def shared_bytes(self) -> int:
        """Bytes of weights this session reads from its model's :class:`SharedWeights`."""
        return sum(len(w.data) for w in self.shared)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime failed while running the model: {str(exc)[:500]}") from None
        if self.lean:
            release_freed_memory()
        return dict(zip(names, values))


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the heap pages freed by the last run back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Without the CPU arena every run mallocs and frees its buffers, and glibc keeps the freed pages in a fragmented
    heap: a `cnnviz report` over 100 images of SqueezeNet grew to 640 MB (363 MB with private arenas); trimming after
    each run keeps it at 326 MB, the same as one long run."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
