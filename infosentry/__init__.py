"""infosentry: a self-hosted information sentry."""

__version__ = "0.1.0"
