"""postd: a self-hosted daemon that schedules and publishes social-media posts."""

__version__ = "0.1.0"
