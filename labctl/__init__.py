"""labctl: build, provision and prove a keepalived hot-standby lab."""

__version__ = "0.1.0"
