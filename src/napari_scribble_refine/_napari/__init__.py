"""The napari face of the plugin: the widget, its controls and tasks, layers, sample data.

napari reaches these through the npe2 manifest (``napari.yaml``); nothing here is imported
by the engine (``core/``) or the scripting API until napari asks for the widget.
"""
