"""Low-level helpers that import nothing else from sepconv: timing, machine description, atomic files, memory."""
