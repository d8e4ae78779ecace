"""smpsim: a distributed simulator of an SMP's translation caches and the Linux pkmap ring."""

__version__ = "0.1.0"
