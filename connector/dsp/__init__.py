"""The Dataspace Protocol side of the node: the HTTPS binding, the callers' identity (DCP),
the message shapes and the one outbound peer client.

* :mod:`connector.dsp.binding`: reading a protocol request (size, JSON bounds, then the
  sender's token) and the version metadata;
* :mod:`connector.dsp.identity`: DIDs (``did:web``) and self-issued ID tokens;
* :mod:`connector.dsp.gate`: who may talk to this node, and replay defence;
* :mod:`connector.dsp.client`: requests to peers at the DSP base they advertise.
"""

from connector.dsp.binding import (
    DSP_CONTEXT,
    MAX_MESSAGE_BYTES,
    catalog_request_since,
    open_blob_request,
    open_request,
)

__all__ = ["DSP_CONTEXT", "MAX_MESSAGE_BYTES", "catalog_request_since", "open_blob_request", "open_request"]
