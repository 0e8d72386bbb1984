"""napari plugin: reader, writer, sample data and widgets, declared in ``napari.yaml``.

The widgets only gather parameters, run the engine in a worker thread and put
results into layers; every computation lives in the engine modules.
"""
