"""The node's audit of a translated model, run in a sandbox that holds no consumer code.

The export run (``training_jobs/export.py``) loads the consumer's native model — a pickle or a
factory executes consumer code — so it never sees the held-out rows. Its ONNX file is then
judged here, by node code alone, in a second sandbox that mounts the file, the node's probe
inputs, the native model's outputs on them, and the provider's rows read-only:

1. :mod:`.structure` refuses what the node will not release (custom operator domains, text,
   training info, external data) and :mod:`.rewrite` rewrites the rest: every name, doc
   string and metadata entry is the node's own (both walk the model with :mod:`.walk`);
2. :mod:`.memorization` refuses weights that hold rows of the provider's data (when the node
   holds rows), and :mod:`.expected` counts the weights the node gave the export to load;
3. :mod:`.check` runs ``onnx.checker`` and ONNX Runtime: outputs on the probe inputs against
   the native ones, accuracy on the held-out rows.

The result is the released model and a small JSON report (:mod:`.__main__`). Inside the
sandbox this package is copied to ``/agora/agora_audit`` and run as ``python -m
agora_audit``: it imports only the standard library, numpy, onnx and onnxruntime, and its
own modules relatively.
"""
