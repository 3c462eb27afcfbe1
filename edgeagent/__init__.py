"""edgeagent: run a solar-powered micro data center on its own sun."""

__version__ = "0.1.0"
