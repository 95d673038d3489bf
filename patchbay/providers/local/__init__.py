"""The embedded model: :mod:`.model` runs SmolLM2 through llama-cpp-python with no network;
:mod:`.grammar` turns tools and JSON schemas into a grammar that constrains its output."""

__all__: list[str] = []
