"""The voice pipeline: device protocol, session state machine, pipeline stages and providers."""
