"""The client side: a device in Python and a load generator for xiaozhi-compatible servers.

Kept out of ``voice/`` (the server) because it only speaks the public protocol: it measures any
xiaozhi-compatible server, and the server never imports it. ``simulated_device`` is one device
(``manage.py talk``, the tests, the benchmarks); ``playout`` simulates the firmware's playback
queue, ``generator`` drives many devices, ``report`` turns what they measured into figures and
verdicts, ``chart`` draws them for the admin, ``server`` starts a local server to measure
(``manage.py loadtest``). Runs are stored as ``LoadTestRun`` rows.
"""
