"""Load generator for xiaozhi-compatible servers: many simulated devices speaking the public protocol.

``playout`` simulates the firmware's playback queue, ``generator`` drives the devices, ``report``
turns what they measured into figures and verdicts, ``server`` starts a local server to measure.
"""
