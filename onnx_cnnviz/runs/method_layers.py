"""Which of the asked methods can run on a model, and at which layer: a method that reads a spatial feature map
(the CAM family) cannot run on a model that has none (an MLP), while the gradient methods can. A run computes what
can be computed and says, per method, what cannot, instead of refusing everything for one method."""
from __future__ import annotations

from ..errors import InputError
from ..methods import registry


def method_layers(m, methods: list, layer: str | None, reporter=None) -> tuple:
    """(layers, unavailable): ``layers`` the layer each method that can run on ``m`` reads (None for the methods
    that read none), in the order asked; ``unavailable`` {method: why it cannot run} for the others, each also told
    to ``reporter`` as a warning.

    Raises:
        InputError: the ``layer`` given is wrong for a method (the user's choice: an error whatever the other
            methods), or no asked method can run on ``m`` (the first method's reason).
    """
    layers, unavailable, first = {}, {}, None
    for name in methods:
        try:
            layers[name] = registry.resolved_layer(m, name, layer)
        except InputError as exc:
            if layer is not None:
                raise
            first = first or exc
            unavailable[name] = str(exc)
    if not layers:
        raise first
    if reporter is not None:
        for name, why in unavailable.items():
            reporter.warn(f"{name} cannot run on this model and is left out ({why.rstrip('.')}); the other method(s) "
                          f"({', '.join(layers)}) run.")
    return layers, unavailable


def unavailable_line(unavailable: dict, out) -> str:
    """The error line a run ends with when some asked methods could not run (exit code 1 on the command line)."""
    names = ", ".join(unavailable)
    return (f"{len(unavailable)} method(s) could not run on this model ({names}: see the warning above); the other "
            f"results are in {out}")
