"""Files shipped inside the package (bundled demonstration data); read them with importlib.resources."""
