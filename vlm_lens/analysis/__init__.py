"""The paper's measurements as functions that return small result objects with ``.to_frame()``."""
