"""The offload service: the Open Inference Protocol (KServe v2) over HTTP."""
