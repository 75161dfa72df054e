"""Search over sharded galleries: the request/response format (:mod:`metaembed.serve.protocol`, no Ray
needed) and the Ray Serve application (:mod:`metaembed.serve.app`, ``python -m metaembed.serve DIR``)."""

#: The Ray the distributed build and the server are tested with (requirements-test.txt pins the same).
RAY_REQUIREMENT = "ray[data,serve]==2.60.0"
