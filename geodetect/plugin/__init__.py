"""napari plugin: all napari/Qt code lives here, thin adapters over the core modules."""
