"""inferq: a Python client for the inferq queue-based inference server.

    import numpy as np, inferq
    c = inferq.Client("http://localhost:8080")
    out = c.run("iris", {"x": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)})
    out["label"]   # array([0])
"""

from .client import FINAL, AsyncClient, Client, StepWorker
from .errors import (BadRequest, Conflict, Forbidden, InferqError, JobFailed, NotFound, QueueFull, RequestTimeout,
                     TooLarge, Unauthorized, Unavailable, Unprocessable)
from ._tensors import decode_binary_response, decode_response, encode_binary

__all__ = ["Client", "AsyncClient", "StepWorker", "FINAL", "InferqError", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
           "Conflict", "RequestTimeout", "TooLarge", "Unprocessable", "QueueFull", "Unavailable", "JobFailed",
           "encode_binary", "decode_response", "decode_binary_response"]
__version__ = "0.1.0"
