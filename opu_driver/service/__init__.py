"""The OPU service (``opu serve``): one device shared by several DFA training processes over TCP.

    from opu_driver.service import OpuService
    with OpuService("sim://?seed=3", bind=("127.0.0.1", 5000)) as service:
        service.serve_forever()

Clients use ``dfa_client.connect("tcp://127.0.0.1:5000", n_components=...)``. The message format, the limits and
the security model are in docs/service.md.
"""
from .server import OpuService, ServiceLimits, ServiceStats, is_loopback

__all__ = ["OpuService", "ServiceLimits", "ServiceStats", "is_loopback"]
