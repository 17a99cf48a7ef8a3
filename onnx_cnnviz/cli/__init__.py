"""The ``cnnviz`` command line (installed as ``onnx_cnnviz.cli``): click commands that parse, call the library and
print or save. No explanation logic lives here."""
