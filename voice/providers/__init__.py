"""Model and service providers behind the interfaces of ``base``; built once per process by ``registry``."""
