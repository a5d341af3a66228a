"""omni: Context Unrolling in Omni Models, small and from scratch."""

__version__ = "0.1.0"
