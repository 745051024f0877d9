"""The packed int8 / int4 layers and the reading of the quantize stage's packed copies.

They sit below the stages (next to :mod:`tutorlm.models`) so that every stage that
loads a model, through :func:`tutorlm.models.load_model`, loads the quantize stage's
``int8-packed`` / ``int4-packed`` directories as the quantized models they are: what
is evaluated, sampled and served is then the same arithmetic the quantize table
measured. :mod:`tutorlm.quantize` still writes them (``quantize/saving.py``).

- :mod:`tutorlm.packed.layers`: the layers and their CPU kernels (imports torch);
- :mod:`tutorlm.packed.directory`: ``quantization.json`` and ``packed.safetensors``.

Nothing is imported here, so that ``tutorlm.models`` stays free of torch at import.
"""
