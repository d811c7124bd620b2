"""The graph contract: tensor names, dtypes and shapes, and the token layout, shared by the engine and the exporters."""
