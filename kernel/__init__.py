"""The small shared kernel every Agora package may import.

It holds what all domains need and none of them owns: the error tree, sha256 and
canonical-JSON helpers, the database plumbing, the audit log, the object-store
interface and the HTTP client the command line uses to talk to a node. It imports no
other Agora package, so the one-way dependency rule of the design holds:
``node`` -> (``marketplace``, ``connector``, ``training_jobs``) -> ``contracts`` -> ``kernel``.
"""
