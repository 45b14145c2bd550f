"""The OPU service (``opu serve``): one device shared by several DFA training processes over TCP.

    from opu_driver.service import OpuService
    with OpuService("sim://?seed=3", bind=("127.0.0.1", 5000)) as service:
        service.serve_forever()

Clients use ``dfa_client.connect("tcp://127.0.0.1:5000", n_components=...)``. The message format, the limits and
the security model are in docs/service.md, and so is how the package is organised (one module per concern:
``server``, ``session``, ``scheduler``, ``fingerprint``, ``limits``).
"""

from .limits import ServiceLimits, ServiceStats
from .server import OpuService, is_loopback

__all__ = ["OpuService", "ServiceLimits", "ServiceStats", "is_loopback"]
