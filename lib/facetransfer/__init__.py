"""facetransfer: reproducible transfer-learning studies of face gender and age.

The notebooks in ``notebooks/`` tell the story; this package does the work.
"""

__version__ = "0.1.0"
