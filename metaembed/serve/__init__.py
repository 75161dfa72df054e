"""Search over sharded galleries: the request/response format (:mod:`metaembed.serve.protocol`, no Ray
needed) and the Ray Serve application (:mod:`metaembed.serve.app`, ``python -m metaembed.serve DIR``)."""
