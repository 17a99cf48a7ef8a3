"""``Model``: a loaded classifier, detector or segmenter plus the cache of rewritten graphs and sessions built for it.

Everything a method needs comes from :meth:`Model.run`: the class scores (a detector's or segmenter's head output),
any exposed intermediate tensors and the gradient of the target (:mod:`onnx_cnnviz.targets`: a class score, a
detection, a region, any weighted sum of an output) with respect to any tensors, from one onnxruntime run per
batch. A rewritten graph is built once per (input size, outputs, gradient targets, rule set, seed mode) and kept on
the model object; nothing else is remembered between calls.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import runtime
from . import targets as target_kinds
from .errors import InputError, ModelStructureError
from .graph import held
from .graph import layout as graph_layout
from .graph import load as graph_load
from .graph import shapes as graph_shapes
from .graph.loading import batch_pass, batch_record, normalise_passes, read_pass
from .graph.loading.batch import bakes_batch_one, batch_one_only, batches_correctly
from .graph.loading.choices import inputs_record, layout_record, score_record
from .graph.loading.size import shapes_record
from .graph.autodiff import SEED_INPUT, TARGET_OUTPUT, append_gradients, grad_name
from .graph import local_backward
from .graph.backward_split import IMAGES_PREFIX, ROWS_INPUT, split_backward
from .graph.head import find_score
from .graph.outputs import keep_outputs
from .graph.seed_narrowing import SeedPaths
from .graph.structure import (Layer, candidate_layers, default_layer, downstream, find_image_input, resolve_layer,
                              upstream, without_other_inputs)
from .input_checks import check_batch_size, check_images, size_pair
from .lru_cache import LRUCache
from .run_result import RunResult, as_nchw, batch_axis, check_finite, checked, shape_text
from .tasks.data_sized import data_sized_info
from .tasks.decoders import find_decoder
from .tasks.head import TASKS, NotAClassifierError, check_head, check_outputs, head_output
from .tasks.levels import backbone_output, pyramid_levels

__all__ = ["Model", "RunResult", "LRUCache", "check_finite", "DEFAULT_MAX_SESSIONS", "repeated_images"]

DEFAULT_BATCH_SIZE = 16
DEFAULT_SPATIAL = 224
#: Sessions (and other cached graphs and plans) a model keeps at most, least recently used dropped first: each
#: onnxruntime session holds its own graph and buffers, so a long-lived process explaining with many layers, rules
#: and sizes must not grow without limit.
DEFAULT_MAX_SESSIONS = 8
#: Input sizes whose specialised graph (a copy of the model with shapes) a model keeps at most.
MAX_SIZES = 4
#: Memory the load-time batching check (batch 2 against batch 1, see ``Model._batches_correctly``) may take. Past it
#: the check is skipped and images run one at a time, which is always correct: at such sizes batching gains little.
PROBE_BUDGET_BYTES = 256 * 2 ** 20
#: Forward tensors gathered for one run of a split backward pass (``Model._run_shared_forward``) at most, past one
#: row: a row of an input gradient's backward pass reads every activation of its image.
FED_BUDGET_BYTES = 256 * 2 ** 20


@dataclass
class _Specialised:
    """The normalised model with the image's C, H, W fixed, and everything derived from it."""
    model: onnx.ModelProto
    info: dict
    layers: list
    constants: dict  # run-time computed integer tensors whose value does not depend on the batch
    views: dict = field(default_factory=dict)  # layer name -> LayerView, for layers not kept NCHW by the model
    stats: dict = field(default_factory=dict)  # how the shapes were learnt (graph/loading/size.py's shapes_record)
    # Plans read from the graph alone (no session), kept as long as the graph: where seeds reach, local runs.
    plans: dict = field(default_factory=dict)

    def seed_paths(self) -> SeedPaths:
        if "seed-paths" not in self.plans:
            self.plans["seed-paths"] = SeedPaths(self.model, self.info)
        return self.plans["seed-paths"]


class Model:
    """A classifier loaded for explanation. Build with :func:`onnx_cnnviz.load`."""

    def __init__(self, source, device: str = "auto", input: str | None = None, output: str | None = None,
                 batch_size: int | None = None, threads: int | None = None, input_size: tuple | None = None,
                 max_nodes: int | None = graph_load.MAX_NODES, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_pixels: int | None = graph_load.MAX_PIXELS, task: str = "classifier", labels=None):
        if task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, not {task!r}.")
        self.task = task
        self.labels = None if labels is None else [str(v) for v in labels]
        if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool)
                                       or max_pixels < 1):
            raise InputError(f"max_pixels must be a positive int or None, not {max_pixels!r}.")
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        if input_size is not None:
            input_size = size_pair(input_size)
            self._check_pixels(input_size, f"input_size={input_size}", InputError)
        self.providers = runtime.providers_for(device)
        self.device = runtime.device_of(self.providers)
        self.threads = threads
        original, passes = read_pass(source, max_nodes=max_nodes)
        held.claim(self, original)  # weights held outside the protobuf (256 MiB or more) live as long as this
        self.metadata = {p.key: p.value for p in original.metadata_props}
        model, normal = normalise_passes(original, copy=False)  # read_model gave a copy of its own
        image = find_image_input(model, input)
        self.input_name = image.name
        if task == "classifier":
            if output is None:
                check_outputs(model)
            self.output_name, self.score_name, self.softmax_skipped = find_score(model, output)
        else:  # the head output as it is: a detector's or segmenter's targets read its elements
            self.output_name = self.score_name = head_output(model, task, output)
            self.softmax_skipped = None
        kept = without_other_inputs(model, self.input_name, self.score_name)
        passes += normal + [inputs_record(self.input_name, model, kept),
                            score_record(task, self.output_name, self.score_name, self.softmax_skipped)]
        model = kept
        # A channels-last or integer-pixel input gets an NCHW float input in front (graph/layout.py): users, methods
        # and gradients then see NCHW float pixels whatever the model was exported with.
        model, adapted = graph_layout.adapt_image_input(model, image)
        image = adapted.value
        self.input_name = image.name
        self.source_input = adapted.original  # the image input's name in the file (input_name may be ours)
        self.input_layout = adapted.layout
        self.input_dtype = adapted.dtype
        passes.append(layout_record(adapted.original, adapted.layout, adapted.dtype, self.input_name))
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in image.type.tensor_type.shape.dim]
        self._static_hw = tuple(dims[2:]) if all(d is not None for d in dims[2:]) else None
        if self._static_hw:
            self._check_pixels(self._static_hw, "the model's declared input", ModelStructureError)
        self.channels = dims[1]
        self.static_batch = False
        # The graph as exported (batch 1) is kept where the batch was rewritten: the fallback if that does not batch.
        plan = batch_pass(model, self.input_name)
        self._batched, self._base, rewritten = plan.batched, plan.base, plan.rewritten
        self._one_at_a_time_why = None
        self._cache = LRUCache(max_sessions)
        self._specs = LRUCache(MAX_SIZES)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        if input_size is not None and self._static_hw and tuple(input_size) != self._static_hw:
            raise InputError(f"input_size={tuple(input_size)} but the model fixes its input at {self._static_hw}.")
        self._input_size = input_size
        hw = self._static_hw or self._default_hw()
        self._check_pixels(hw, f"the default input size {hw[0]}x{hw[1]}", ModelStructureError)
        if self.channels is None:
            raise ModelStructureError("the image input's channel count is not fixed in the model; re-export it with "
                                      "a static channel dimension.")
        try:
            spec = self._batched_spec(hw, rewritten)
        except ModelStructureError as exc:
            if self._static_hw or self._input_size or isinstance(exc, NotAClassifierError):
                raise
            raise ModelStructureError(
                f"the model accepts images of any size but does not run at {hw[0]}x{hw[1]} ({exc}). Give the size "
                "it was trained for: load(..., input_size=(H, W)) or --input-size HxW.") from None
        if not rewritten and not self.static_batch and \
                bakes_batch_one(self._batched, self.input_name, (self.channels, *hw)):
            # Declared "any batch", yet shape inference at batch 2 says otherwise and the graph only runs at batch 1
            # (a constant [1, K] reshape): run it one image at a time rather than fail at the first batch.
            self._base = copy.deepcopy(self._batched)
            graph_load.fix_batch_inplace(self._base, self.input_name, 1)
            self.static_batch = True
            self._one_at_a_time_why = "declared any batch, it runs at batch 1 only"
            self._specs.clear()
            self._cache.clear()
            spec = self._spec(hw)
        elif rewritten and not self.static_batch and not self._batches_correctly(hw):
            # The graph hard-codes batch 1 somewhere we could not rewrite: run one sample at a time.
            self.static_batch = True
            self._one_at_a_time_why = "batch 2 did not give batch 1's scores, or was too large to check"
            self._specs.clear()
            self._cache.clear()
            spec = self._spec(hw)
        elif not self.static_batch:
            self._base = None
        #: Elements per image of the head output: K for a classifier, C*H*W for a segmenter, (4+C)*A for a detector.
        self.score_size = int(np.prod(spec.info[self.score_name].shape[1:]))
        self.decoder = None
        if task == "classifier":
            self.num_classes = self.score_size
        elif task == "segmenter":
            self.num_classes = int(spec.info[self.score_name].shape[1])
        else:
            self.decoder = find_decoder(self.score_name, spec.info[self.score_name].shape)
            self.num_classes = self.decoder.num_classes
        #: A detector's pyramid levels (the maps its head reads, finest first; Grad-CAM over them with layer=levels).
        self.levels = pyramid_levels(spec.model, spec.layers, getattr(self.decoder, "anchors", None))
        if self.labels is not None and self.num_classes is not None and len(self.labels) != self.num_classes:
            raise InputError(f"labels has {len(self.labels)} class names; the model has {self.num_classes} classes.")
        self._layers = spec.layers
        if self.levels:
            self._default_layer = self.levels[-1]
        elif task == "segmenter":
            self._default_layer = backbone_output(spec.model, spec.layers)
        else:
            self._default_layer = default_layer(spec.layers, spec.model, self.input_name)
        #: What each loading pass found or changed, in the order they ran (``cnnviz inspect`` lists them).
        self.load_passes = tuple(passes + [batch_record(plan, self.static_batch, self._one_at_a_time_why),
                                           shapes_record(hw, **spec.stats)])

    # --- public description ------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """Candidate target layers: every feature map on the path from image to score, input to output order, with
        its (None, C, h, w) shape: NCHW tensors, and channels-last and token tensors seen as NCHW (``Layer.view``)."""
        return list(self._layers)

    @property
    def default_layer(self) -> str | None:
        """The last spatial feature map before global pooling / flatten (the usual CAM layer)."""
        return self._default_layer

    @property
    def takes_pixels(self) -> bool:
        """Whether the model was exported taking integer pixels (uint8, ...) and preprocesses them inside: give it
        raw pixel values (0..255 for uint8) as a float or integer NCHW array."""
        return not np.issubdtype(np.dtype(self.input_dtype), np.floating)

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) the model expects; H, W are None for models that accept any size."""
        hw = self._static_hw or (None, None)
        return (self.channels, *hw)

    def tensor_shape(self, name: str, hw=None) -> tuple:
        """The shape (None for the batch) of tensor ``name`` as :meth:`run` returns it at input size ``hw``: a layer
        the model keeps channels-last or as tokens has its (None, C, h, w) view's shape."""
        spec = self.spec(hw)
        view = spec.views.get(name)
        if view is not None:
            return view.nchw_shape()
        if name not in spec.info or spec.info[name].shape is None:
            self._require_tensor(name)
            raise InputError(f"the shape of '{name}' is not known.")
        return tuple(spec.info[name].shape)

    def layer(self, name) -> Layer:
        """The candidate layer called ``name`` (a name or a :class:`Layer`); :class:`UnknownLayerError` with the
        closest names otherwise."""
        if isinstance(name, Layer):
            name = name.name
        if not isinstance(name, str):
            raise InputError(f"a layer is named by a string (see Model.layers), got {name!r}.")
        return resolve_layer(self._layers, name)

    def layer_name(self, layer=None) -> str:
        """One layer's name: None -> :attr:`default_layer`, or a name or :class:`Layer` checked against
        :attr:`layers`."""
        if layer is not None and not isinstance(layer, (str, Layer)):
            raise InputError(f"one layer is expected here: a name (see Model.layers) or None, got {layer!r}.")
        return self.layer_names(layer)[0]

    def layer_names(self, layer=None) -> list[str]:
        """The layer names ``layer`` stands for: None -> ``[default_layer]``; a name or :class:`Layer`; or a list of
        them (duplicates dropped, order kept). Every name is checked against :attr:`layers`."""
        if layer is None:
            if self._default_layer is None:
                raise ModelStructureError("the model has no spatial feature map (h*w > 1) on the path to the score, "
                                          "so there is no default layer to explain at; choose one of Model.layers "
                                          "(--layer on the command line).")
            return [self._default_layer]
        items = [layer] if isinstance(layer, (str, Layer)) else layer
        try:
            items = list(items)
        except TypeError:
            raise InputError(f"layer must be None, a layer name or a list of names, got {layer!r}.") from None
        if not items:
            raise InputError("layer is an empty list; give a layer name, a list of names, or None (the default "
                             "layer).")
        return list(dict.fromkeys(self.layer(item).name for item in items))

    def __repr__(self) -> str:
        if self.task != "classifier":
            return (f"Model(task={self.task!r}, input={self.input_name!r} {self.input_shape}, "
                    f"head={self.score_name!r} {self.tensor_shape(self.score_name)}, {self.num_classes} classes, "
                    f"{len(self._layers)} layers, default_layer={self._default_layer!r}, device={self.device!r})")
        return (f"Model(input={self.input_name!r} {self.input_shape}, score={self.score_name!r} "
                f"[{self.num_classes} classes{', softmax skipped' if self.softmax_skipped else ''}], "
                f"{len(self._layers)} layers, default_layer={self._default_layer!r}, device={self.device!r})")

    # --- graphs ----------------------------------------------------------------------------------------------
    def _check_pixels(self, hw, what: str, error=InputError) -> None:
        """``error`` when ``hw``'s H*W is over :attr:`max_pixels`: checked before any graph is specialised or run at
        that size, so a model (or an argument) declaring a huge image costs nothing."""
        if self.max_pixels is None:
            return
        h, w = (int(v) for v in hw)
        if h * w > self.max_pixels:
            raise error(f"{what} is {h}x{w} = {h * w:,} pixels, more than max_pixels={self.max_pixels:,}; every "
                        "feature map scales with it. If the size is intended, pass a larger limit: "
                        "load(..., max_pixels=N) (or None for no limit).")

    def _default_hw(self) -> tuple:
        if self._input_size:
            return self._input_size
        size = self.metadata.get("cnnviz.input_size")
        if size:
            parts = size.lower().split("x")
            h, w = (int(v) if v.strip().lstrip("+").isdecimal() else 0 for v in parts) if len(parts) == 2 else (0, 0)
            if h < 1 or w < 1:
                raise ModelStructureError(f"the model's metadata 'cnnviz.input_size' is {size!r}, not HxW; give the "
                                          "size: load(..., input_size=(H, W)) or --input-size HxW.")
            return (h, w)
        return (DEFAULT_SPATIAL, DEFAULT_SPATIAL)

    def _batched_spec(self, hw: tuple, had_static_batch: bool) -> _Specialised:
        """The spec at ``hw`` of the batch-dynamic graph; for a graph exported at a fixed batch whose batch-dynamic
        rewrite does not even run (a Reshape that bakes the batch into another axis, as attention reshapes do), the
        spec of the graph as exported, run one image at a time."""
        try:
            return self._spec(hw)
        except ModelStructureError:
            chw = (self.channels, *hw)
            if self._base is None and batch_one_only(self._batched, self.input_name, chw):
                # Declared "any batch", yet batch 1 is baked in where no rewrite reached (torch.export traced at
                # batch 1): the graph as exported runs one image at a time.
                self._base = copy.deepcopy(self._batched)
                graph_load.fix_batch_inplace(self._base, self.input_name, 1)
            elif not had_static_batch or self._base is None:
                raise
            self.static_batch = True
            self._one_at_a_time_why = "the graph with a symbolic batch does not run; the graph as exported does"
            self._specs.clear()
            self._cache.clear()
            try:
                return self._spec(hw)
            except ModelStructureError:
                self.static_batch = False  # not a batch problem: the batch-dynamic graph's error says more
                self._specs.clear()
                self._cache.clear()
            raise

    def _spec(self, hw: tuple) -> _Specialised:
        hw = tuple(int(v) for v in hw)
        return self._specs.get(hw, lambda: self._specialise(hw))

    def _specialise(self, hw: tuple) -> _Specialised:
        model = copy.deepcopy(self._base if self.static_batch else self._batched)
        graph_load.set_input_shape_inplace(model, self.input_name, (self.channels, *hw))
        # An If whose condition is shape arithmetic always takes one branch at this size: inline it, so that walks
        # and the backward pass see plain nodes.
        ifs = sum(n.op_type == "If" for n in model.graph.node)
        model = graph_shapes.fold_ifs_at_size(model, self.input_name, (self.channels, *hw))
        info = graph_shapes.infer(model)
        made = {o for node in model.graph.node for o in node.output}
        stats = {"ifs_folded": max(0, ifs - sum(n.op_type == "If" for n in model.graph.node)), "probed": 0,
                 "inferred": sum(1 for name, ti in info.items() if name in made and ti.static)}
        graph = model.graph
        on_path = downstream(graph, [self.input_name]) & upstream(graph, [self.score_name])
        unknown = [n for node in graph.node for n in node.output if n in on_path and not
                   (n in info and info[n].shape is not None and all(d is not None for d in info[n].shape[1:]))]
        stats["pools"] = len(graph_shapes.misinferred_pools(model, info))
        if stats["pools"]:
            # Every shape after such a pool is off by one window: measure the whole path instead.
            unknown = [n for node in graph.node for n in node.output if n in on_path]
        inits = {t.name for t in graph.initializer}
        probed = None
        if unknown or self.score_name not in info or info[self.score_name].shape is None:
            probe_names = list(dict.fromkeys(unknown + [self.score_name]))
            # The integer tensors the constants below are drawn from, read in the same runs (their types may be
            # among the unknowns).
            candidates = list(dict.fromkeys(
                name for node in graph.node if any(o in on_path for o in node.output) for name in node.input
                if name and name not in inits and not (name in info and info[name].is_float)))
            probed_info, probed = graph_shapes.probe_with_constants(model, probe_names, candidates, self.input_name,
                                                                     (self.channels, *hw))
            inferred = dict(info)
            info.update(probed_info)
            # the zero image's lengths after a score threshold or NMS are not the model's
            info.update(data_sized_info(model, inferred, probed_info, self.input_name, (self.channels, *hw)))
            stats["probed"] = len(probed_info)
        check_head(self.task, self.score_name, info.get(self.score_name))
        graph_shapes.annotate_inplace(model, info)
        # Shape arithmetic computed at run time (Shape -> Gather -> Div feeding a Slice, say) is constant once C, H, W
        # are fixed; backward rules need those values.
        computed_ints = list(dict.fromkeys(
            name for node in graph.node if any(o in on_path for o in node.output)
            for name in node.input if name and name not in inits and name in info and not info[name].is_float))
        if probed is not None:
            constants = {name: probed[name] for name in computed_ints if name in probed}
        else:
            constants = graph_shapes.batch_independent_values(model, computed_ints, self.input_name,
                                                               (self.channels, *hw))
        layers = candidate_layers(model, self.input_name, self.score_name, info)
        return _Specialised(model, info, layers, constants, {la.name: la.view for la in layers if la.view}, stats)

    def _session(self, hw, outputs: tuple, wrt: tuple, rule: str, target_mode: str, at: str | None = None,
                 dead: frozenset = frozenset()):
        at = at or self.score_name
        key = (tuple(hw), outputs, wrt, rule if wrt else None, target_mode if wrt else None) + \
            ((at,) if wrt and at != self.score_name else ()) + ((dead,) if wrt and dead else ())
        return self._cache.get(key, lambda: self.new_session(self._graph(hw, outputs, wrt, rule, target_mode, at,
                                                                         dead)))

    def new_session(self, graph: onnx.ModelProto) -> runtime.Session:
        """A new onnxruntime session over ``graph`` (a rewritten graph of this model) on the model's device and
        threads, reading the large weights from the model's one shared copy instead of loading its own (see
        :mod:`onnx_cnnviz.runtime`); ``graph`` need not be kept. Not cached: see :meth:`cached_session`."""
        weights = self.__dict__.get("_shared_weights")
        if weights is None:
            weights = self._shared_weights = runtime.SharedWeights()
        return runtime.Session(graph, self.providers, self.threads, weights=weights)

    @property
    def shared_weights(self) -> runtime.SharedWeights | None:
        """The weights the model's sessions share (None before the first session)."""
        return self.__dict__.get("_shared_weights")

    def cached_session(self, key: tuple, build) -> runtime.Session:
        """A session over the graph ``build()`` returns, built once per ``key`` for this model (methods that need
        their own rewritten graph, such as the occlusion prefix, use this)."""
        return self.cached(("session",) + tuple(key), lambda: self.new_session(build()))

    def cached(self, key: tuple, build):
        """``build()``, computed once per ``key`` for this model (plans and sessions of methods' own graphs)."""
        return self._cache.get(("custom",) + tuple(key), build)

    @property
    def cache_size(self) -> int:
        """How many sessions, graphs and plans the model holds now (at most ``max_sessions``)."""
        return len(self._cache)

    @property
    def graph_proto(self) -> onnx.ModelProto:
        """The normalised graph, its batch dynamic (or fixed at 1 for a model run one image at a time), before any
        input size is fixed: loading it again gives this model. Read-only: the model's own, not a copy."""
        return self._base if self.static_batch else self._batched

    def spec(self, hw=None) -> _Specialised:
        """The normalised graph specialised to input size ``hw`` (default: the model's own), with its shape info."""
        return self._spec(hw or self._static_hw or self._default_hw())

    def build_graph(self, hw=None, outputs=(), wrt=(), rule: str = "vanilla",
                    target_mode: str = "input", inline_weights: bool = True) -> onnx.ModelProto:
        """The rewritten graph: outputs = score, ``outputs`` tensors, and ``cnnviz/grad/<T>`` for ``T`` in ``wrt``.

        ``target_mode``: "input" (the graph takes ``cnnviz/seed`` (N, K), the weights of each sample's class scores:
        a one-hot row explains one class) or "top1" (each sample's top-scoring class, chosen inside the graph and
        returned as ``cnnviz/target``). The result is a plain ONNX model: save it with ``onnx.save`` and run it with
        any onnxruntime (a model of 2 GiB of weights or more must be saved with ``save_as_external_data=True``, as
        any ONNX model that large). ``inline_weights=False``: held weights (256 MiB or more) stay outside the protobuf
        (graph/held.py), as the model's sessions read them: cheaper, but only this process can run that graph."""
        graph = self._graph(hw, outputs, wrt, rule, target_mode)
        return held.inlined(graph) if inline_weights else graph

    def _graph(self, hw=None, outputs=(), wrt=(), rule: str = "vanilla", target_mode: str = "input",
               at: str | None = None, dead: frozenset = frozenset()) -> onnx.ModelProto:
        """:meth:`build_graph` with the weights as the model holds them (held ones stay placeholders); ``at``: the
        tensor the seed is fed to (default: the score); ``dead``: tensors no seed fed to it reaches
        (:meth:`~onnx_cnnviz.graph.seed_narrowing.SeedPaths.dead`)."""
        spec = self.spec(hw)
        for name in list(outputs) + list(wrt):
            if name not in spec.info and name != self.input_name:
                raise InputError(f"'{name}' is not a tensor of this model.")
        model = spec.model
        extra = []
        if wrt:
            gg = append_gradients(model, at or self.score_name, list(wrt), spec.info, rule_set=rule,
                                  seed=target_mode, constants=spec.constants, dead=dead)
            model = gg.model
            extra = [gg.gradients[w] for w in wrt] + ([gg.target_output] if gg.target_output else [])
        names = [self.score_name] + [o for o in outputs if o != self.score_name] + extra
        return keep_outputs(model, names, spec.info, private=bool(wrt))

    # --- running ----------------------------------------------------------------------------------------------
    def check_input(self, x) -> np.ndarray:
        """``x`` checked against the model's input (4-D float, channels, size, finite, not empty) and returned as a
        C-contiguous float32 array; :class:`InputError` saying what is wrong otherwise."""
        return check_images(x, self.channels, self._static_hw, self.takes_pixels,
                            lambda hw: self._check_pixels(hw, "each image of x", InputError))

    def targets_for(self, targets, n: int) -> np.ndarray | None:
        """``targets`` (None, an int or class name, one per sample, or :class:`~onnx_cnnviz.targets.ClassScore`
        objects) as an (N,) int64 array of classes, or None for top-1. Other target objects (a region, a detection,
        an output element) name no class score: :class:`InputError` (methods take them through :meth:`run`)."""
        if targets is None:
            return None
        seeds = target_kinds.resolve(self, targets, n)
        other = [t for t in seeds.objects or () if isinstance(t, target_kinds.Target)
                 and not isinstance(t, target_kinds.ClassScore)]
        if other:
            raise InputError(f"this takes class targets (ints, class names, ClassScore), not "
                             f"{type(other[0]).__name__}.")
        return seeds.classes

    def run(self, x, outputs=(), wrt=(), rule: str = "vanilla", targets=None, score_weights=None,
            batch_size: int | None = None) -> RunResult:
        """One pass per batch returning scores, ``outputs`` tensors and gradients of each image's target wrt ``wrt``.

        ``targets``: None (each image's top-1 class, classifiers only), an int or class name, a target object
        (:mod:`onnx_cnnviz.targets`), or one of these per image; :func:`onnx_cnnviz.targets.resolve` turns them into
        the backward seed. ``score_weights`` (N, K) replaces the one-hot target rows (the gradient is then of
        ``sum_k score_weights[n, k] S[n, k]``). ``scores``: (N, K) class scores, or for a detector or segmenter its
        head output flattened per image (N, :attr:`score_size`). Names in ``outputs``/``wrt`` are tensor names
        (``Model.layers`` lists the 4-D ones) or the input's name. ``RunResult.targets``: the (N,) class each row
        explains (-1 for a target naming none). ``x`` given as one image broadcast along the batch
        (``np.broadcast_to``, as :func:`onnx_cnnviz.tasks.explain` gives the detections of an image) runs its forward
        pass once, and the scores and ``outputs`` come back as read-only broadcast views the same way.
        """
        x = self.check_input(x)
        n = x.shape[0]
        outputs, wrt = tuple(outputs), tuple(wrt)
        for name in outputs + wrt:
            if name != self.input_name and name != self.score_name:
                self._require_tensor(name)
        seeds = target_kinds.resolve(self, targets, n, score_weights) if wrt or targets is not None else None
        mode = "top1" if seeds is None or seeds.rows is None else "input"
        at = self.score_name if seeds is None else seeds.tensor
        hw = tuple(x.shape[2:])
        seed_rows = seeds.rows if wrt and mode == "input" else None
        dead = frozenset()
        if seed_rows is not None:
            spec = self._spec(hw)
            paths = spec.seed_paths()
            # A seed inside one part of a Concat (a detection's class score) starts there, and the branches no
            # nonzero cotangent reaches (other pyramid levels, the box branch) are left out of the backward pass.
            at, seed_rows, support = paths.narrow_with_support(at, seed_rows)
            dead = paths.dead(at, seed_rows, support)
        local = self._local_run(hw, at, wrt, dead) if seed_rows is not None else None
        run_outputs, run_wrt = outputs, wrt
        if local is not None:  # the layer's gradient from the frontier's, on windows (graph/local_backward.py)
            run_outputs, run_wrt = outputs + ((local.layer,) if local.layer not in outputs else ()), (local.frontier,)
        merged = None
        if seed_rows is not None:  # rows that repeat an image (its detections, its top-k classes) share a forward
            merged = self._run_shared_forward(x, hw, run_outputs, run_wrt, rule, at, seed_rows, batch_size, dead)
        if merged is None:
            session = self._session(hw, run_outputs, run_wrt, rule, mode, at, dead)
            merged = self._run_batches(session, x, batch_size, seed_rows, self._spec(hw).info)
        if local is not None:
            merged[grad_name(local.layer)] = self._windowed_gradient(
                local, hw, rule, merged[local.layer], merged.pop(grad_name(local.frontier)), batch_size)
        scores = merged[self.score_name].reshape(n, -1)
        check_finite(scores, f"class scores ('{self.score_name}')")
        result_targets = None
        if wrt:
            result_targets = merged[TARGET_OUTPUT] if mode == "top1" else seeds.classes
        views = self._spec(hw).views
        return checked(RunResult(scores=scores, targets=result_targets,
                                 outputs={o: as_nchw(views, o, merged[o]) for o in outputs},
                                 grads={w: as_nchw(views, w, merged[grad_name(w)]) for w in wrt}))

    def _local_run(self, hw: tuple, at: str, wrt: tuple, dead: frozenset) -> local_backward.LocalRun | None:
        """The local run from the one wanted layer toward ``at`` (:func:`~onnx_cnnviz.graph.local_backward.plan`),
        or None: several tensors wanted, the input, or a layer the model keeps in another layout than NCHW."""
        if len(wrt) != 1 or wrt[0] in (self.input_name, self.score_name):
            return None
        spec = self._spec(hw)
        key = ("local-run", at, wrt[0], dead)
        if key not in spec.plans:
            spec.plans[key] = local_backward.plan(spec.model, spec.info, at, wrt[0], dead)
        run = spec.plans[key]
        if run is None or spec.views.get(run.layer) is not None or spec.views.get(run.frontier) is not None:
            return None
        return run

    def _windowed_gradient(self, run: local_backward.LocalRun, hw: tuple, rule: str, values: np.ndarray,
                           cotangent: np.ndarray, batch_size) -> np.ndarray:
        """The gradient at ``run.layer`` (its forward ``values``, (N, C, H, W)) of the ``cotangent`` at
        ``run.frontier``, from the run's backward pass on a window around each row's nonzero cotangent (see
        :mod:`onnx_cnnviz.graph.local_backward`): exact, zero outside the windows."""
        n = len(values)
        size, origins = local_backward.windows(np.any(cotangent, axis=1), run.span)
        hc, wc = size
        session = self.cached(("local-window", hw, run.layer, run.frontier, rule, size),
                              lambda: self._window_session(run, hw, rule, size))
        out = np.zeros(values.shape, np.float32)
        step = check_batch_size(batch_size) or self.batch_size
        for r0 in range(0, n, step):
            part = range(r0, min(n, r0 + step))
            boxes = [(slice(None), slice(y, y + hc), slice(x, x + wc)) for y, x in origins[r0:r0 + len(part)]]
            feeds = {run.layer: np.stack([values[i][box] for i, box in zip(part, boxes)]),
                     SEED_INPUT: np.stack([cotangent[i][box] for i, box in zip(part, boxes)]).reshape(len(part), -1)}
            grads = session.run(feeds)[grad_name(run.layer)]
            for i, box, g in zip(part, boxes, grads):
                out[i][box] = g
        return out

    def _window_session(self, run: local_backward.LocalRun, hw: tuple, rule: str, size: tuple) -> runtime.Session:
        spec = self._spec(hw)
        window = local_backward.window_model(spec.model, spec.info, run, size)
        info = graph_shapes.infer(window)
        gg = append_gradients(window, run.frontier, [run.layer], info, rule_set=rule, seed="input")
        return self.new_session(keep_outputs(gg.model, [gg.gradients[run.layer]], info, private=True))

    def _run_batches(self, session, x: np.ndarray, batch_size, seed_rows=None, info: dict | None = None) -> dict:
        """Run ``session`` over ``x`` in batches (one image at a time for a static-batch model), feeding
        ``seed_rows`` as the backward seed; outputs are concatenated over the batches along their batch axis
        (:func:`batch_axis`: not axis 0 for an attention tensor such as (L, N, E))."""
        batch_size = check_batch_size(batch_size)  # 0, -3 or 2.5 were coerced silently
        step = 1 if self.static_batch else (batch_size or self.batch_size)
        parts = []
        for start in range(0, len(x), step):
            feeds = {self.input_name: x[start:start + step]}
            if seed_rows is not None:
                feeds[SEED_INPUT] = seed_rows[start:start + step]
            parts.append(session.run(feeds))
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts], axis=batch_axis(info or {}, k)) for k in parts[0]}

    def _run_shared_forward(self, x: np.ndarray, hw: tuple, outputs: tuple, wrt: tuple, rule: str, at: str,
                            seed_rows: np.ndarray, batch_size, dead: frozenset = frozenset()) -> dict | None:
        """:meth:`run` for a batch in which some images repeat: the forward pass once per distinct image, the
        backward pass (:func:`~onnx_cnnviz.graph.backward_split.split_backward`) once per row, fed its image's
        forward tensors. The same numbers as the whole graph on every row, for one forward pass per image instead of
        one per row. None (the caller runs the whole graph) where no image repeats, the model runs one image at a
        time, or the backward pass cannot be cut from the forward one."""
        if self.static_batch or len(x) < 2:
            return None
        first, inverse = repeated_images(x)
        if len(first) == len(x):
            return None
        spec = self._spec(hw)
        shown = (self.score_name,) + tuple(o for o in outputs if o != self.score_name)
        if self.input_name in shown or any(batch_axis(spec.info, o) != 0 for o in shown + wrt):
            return None
        plan = self.cached(("shared-forward", hw, shown, wrt, rule, at, dead),
                           lambda: self._split_sessions(hw, shown, wrt, rule, at, dead))
        if plan is None:
            return None
        forward, backward, fed, static = plan
        step = check_batch_size(batch_size) or self.batch_size
        merged: dict[str, np.ndarray] = {}

        def allocate(name: str, value: np.ndarray) -> np.ndarray:
            if name not in merged:
                merged[name] = np.empty((len(x),) + value.shape[1:], value.dtype)
            return merged[name]

        def place(name: str, rows: np.ndarray, value: np.ndarray) -> None:
            if name not in merged and len(rows) == len(x) and rows[0] == 0 and rows[-1] == len(x) - 1:
                merged[name] = value  # one backward run gave every row, in order: kept as it is, not copied
            else:
                allocate(name, value)[rows] = value

        for c0 in range(0, len(first), step):  # distinct images, a batch at a time
            images = x[first[c0:c0 + step]]
            values = forward.run({self.input_name: images})
            rows = np.flatnonzero((inverse >= c0) & (inverse < c0 + len(images)))
            for name in shown:  # gathered straight into the result: a 640x640 detector's head is MBs per row
                if x.strides[0] == 0:  # one image given as a broadcast view: its values shown the same way
                    merged[name] = np.broadcast_to(values[name][:1], (len(x),) + values[name].shape[1:])
                    continue
                allocate(name, values[name])
                if len(rows) == rows[-1] - rows[0] + 1:
                    np.take(values[name], inverse[rows] - c0, axis=0, out=merged[name][rows[0]:rows[-1] + 1],
                            mode="clip")
                else:
                    merged[name][rows] = values[name][inverse[rows] - c0]
            sources = {IMAGES_PREFIX + t: images if t == self.input_name else values[t] for t in fed}
            # Rows per backward run: at most FED_BUDGET_BYTES of forward tensors gathered for them.
            per_row = sum(v[0].nbytes for v in sources.values())
            chunk = max(1, min(step, FED_BUDGET_BYTES // max(per_row, 1)))
            for r0 in range(0, len(rows), chunk):  # their rows, a batch at a time
                part = rows[r0:r0 + chunk]
                feeds = dict(sources)
                feeds[ROWS_INPUT] = inverse[part] - c0
                feeds.update({t: values[t] for t in static})
                if SEED_INPUT in backward.input_names:  # not where every wanted gradient is known to be zero
                    feeds[SEED_INPUT] = seed_rows[part]
                for name, value in backward.run(feeds).items():
                    place(name, part, value)
        return merged

    def _split_sessions(self, hw: tuple, shown: tuple, wrt: tuple, rule: str, at: str, dead: frozenset):
        """(forward session, backward session, fed tensors, static tensors) for :meth:`_run_shared_forward`, or
        None where the gradient graph does not split."""
        spec = self.spec(hw)
        gg = append_gradients(spec.model, at, list(wrt), spec.info, rule_set=rule, seed="input",
                              constants=spec.constants, dead=dead)
        part = split_backward(gg.model, len(spec.model.graph.node), self.input_name, spec.info,
                              [gg.gradients[w] for w in wrt], spec.constants)
        if part is None:
            return None
        exposed = list(dict.fromkeys(shown + tuple(t for t in part.fed if t != self.input_name) + part.static))
        forward = self.new_session(keep_outputs(part.forward, exposed, spec.info, private=True))
        return forward, self.new_session(part.backward), part.fed, part.static

    def scores(self, x, batch_size: int | None = None) -> np.ndarray:
        """(N, K) float32 class scores before any final Softmax/LogSoftmax/Sigmoid."""
        return self.run(x, batch_size=batch_size).scores

    def vjp(self, x, at: str, cotangent, wrt=None, outputs=(), rule: str = "vanilla",
            batch_size: int | None = None) -> RunResult:
        """Backward pass seeded at any tensor: gradients of ``L = sum cotangent * T`` with ``T`` the tensor ``at``.

        ``cotangent`` has the shape of ``T`` for the batch, ``(N, *T.shape[1:])`` (or ``(N, prod)``); it is fed to the
        graph at run time, so one cached graph serves every cotangent: a one-hot one gives the gradient of one unit (a
        neuron objective, guided backprop of a unit), a channel-uniform one the gradient of a channel mean, and
        ``2 (Phi(x) - Phi_0)`` the gradient of ``||Phi(x) - Phi_0||^2`` (feature inversion). ``wrt``: tensor names
        (default: the input). Returns a :class:`RunResult` whose ``outputs`` hold ``T`` and ``outputs`` and whose
        ``grads`` hold ``dL/d wrt``; ``scores`` is None (the class scores are not computed unless ``T`` needs them).
        """
        x = self.check_input(x)
        n = x.shape[0]
        wrt = (self.input_name,) if wrt is None else tuple([wrt] if isinstance(wrt, str) else wrt)
        outputs = tuple(outputs)
        for name in (at,) + outputs + wrt:
            if name != self.input_name:
                self._require_tensor(name)
        hw = tuple(x.shape[2:])
        spec = self._spec(hw)
        view = spec.views.get(at)
        shown = view.nchw_shape() if view is not None else spec.info.get(at).shape
        if shown is None or any(d is None for d in shown[1:]):
            # The seed is fed as (N, rest) rows reshaped to the tensor: a tensor whose batch is not its outermost
            # axis (attention's (L, N, E)) has no such rows.
            raise InputError(f"vjp cannot be seeded at '{at}': its shape {shape_text(shown)} does not have the "
                             "batch as axis 0; seed a layer (Model.layers) or a tensor of shape (N, ...).")
        size = int(np.prod(shown[1:]))
        seed = np.asarray(cotangent, dtype=np.float32)
        if seed.ndim < 1 or seed.shape[0] != n or int(np.prod(seed.shape[1:])) != size:
            raise InputError(f"cotangent must have shape ({n}, {', '.join(str(d) for d in shown[1:])}) like '{at}', "
                             f"got {seed.shape}.")
        if view is not None:  # given as the layer's (N, C, h, w) view: back to the model's own layout
            seed = view.from_nchw(seed.reshape(n, *shown[1:]))
        seed = np.ascontiguousarray(seed.reshape(n, -1))
        key = ("vjp", hw, at, outputs, wrt, rule)

        def build():
            gg = append_gradients(spec.model, at, list(wrt), spec.info, rule_set=rule, seed="input",
                                  constants=spec.constants)
            names = [at] + [o for o in outputs if o != at] + [gg.gradients[w] for w in wrt]
            return keep_outputs(gg.model, names, spec.info, private=True)

        merged = self._run_batches(self.cached_session(key, build), x, batch_size, seed, spec.info)
        views = spec.views
        return checked(RunResult(scores=None, targets=None,
                                  outputs={o: as_nchw(views, o, merged[o]) for o in (at,) + outputs},
                                  grads={w: as_nchw(views, w, merged[grad_name(w)]) for w in wrt}))

    def _require_tensor(self, name: str) -> None:
        spec = self.spec()
        if name in spec.info:
            return
        resolve_layer(self._layers, name)  # raises UnknownLayerError with suggestions

    def _batches_correctly(self, hw) -> bool:
        """Whether batch 2 gives batch 1's scores on the batch-dynamic graph (graph/loading/batch.py's
        :func:`~onnx_cnnviz.graph.loading.batch.batches_correctly`, within :data:`PROBE_BUDGET_BYTES`)."""
        spec = self._spec(hw)
        return batches_correctly(spec.model, spec.info, self.input_name, self.score_name, (self.channels, *hw),
                                 lambda: runtime.Session(self._graph(hw), ["CPUExecutionProvider"], self.threads,
                                                         weights=runtime.SharedWeights()), PROBE_BUDGET_BYTES)


def repeated_images(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: the index of each distinct image of ``x`` (its first row), in order, and for every row
    the position in ``first`` of its image, so that ``x[first][inverse]`` is ``x``. Images are equal when all their
    bytes are: a sample of about 4,096 values finds the candidates, a full comparison confirms them (hashing every
    byte of a 640x640 image costs more than comparing it)."""
    if x.strides[0] == 0:  # one image broadcast along the batch (tasks.detection.explain): nothing to compare
        return np.zeros(1, np.int64), np.zeros(len(x), np.int64)
    flat = x.reshape(len(x), -1)
    stride = max(1, flat.shape[1] // 4096)
    seen: dict[bytes, list[int]] = {}
    first: list[int] = []
    inverse = np.empty(len(x), np.int64)
    for i in range(len(x)):
        candidates = seen.setdefault(flat[i, ::stride].tobytes(), [])
        for slot in candidates:
            if np.array_equal(flat[first[slot]], flat[i]):
                inverse[i] = slot
                break
        else:
            candidates.append(len(first))
            inverse[i] = len(first)
            first.append(i)
    return np.asarray(first, np.int64), inverse
