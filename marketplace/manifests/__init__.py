"""Declarative manifests: ``agora plan`` shows, ``agora apply`` carries out.

A manifest declares offerings (source file, metadata, access modes, policy) and peers. The
plan compares it with what the node holds — create, new version, metadata update, retire —
and changes nothing; apply carries the plan out, and a second apply finds nothing to do.
Modules: ``schema`` (the shape and its JSON Schema), ``loader`` (YAML with line numbers),
``plan`` (changes, and what the client reports of sources), ``service`` (plan and apply),
``routes``, ``cli``. Nothing is imported here, so the command line starts fast.
"""
