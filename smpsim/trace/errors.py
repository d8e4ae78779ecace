class TraceError(Exception):
    """A run directory or trace that cannot be used: not a run directory, a corrupt or missing part, ...

    The message always names the path concerned.
    """
