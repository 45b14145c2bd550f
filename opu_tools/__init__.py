"""The project's tools: the ``opu`` command, the demo, benchmarks, the soak and the fuzzers.

They use the packages below them (``opu_driver``, ``firmware_sim``, ``dfa_client``) through their public APIs;
nothing imports this package.
"""
