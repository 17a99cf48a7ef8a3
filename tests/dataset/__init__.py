"""Tests of :mod:`onnx_cnnviz.dataset` (the optional Ray pipeline, issue 13)."""
