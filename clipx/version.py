"""The release, and the name it is published under.

The package imports as `clipx`, but `clipx` on the package index is an unrelated project (an image
background-removal tool), so the distribution is `clipx-lens`: `pip install clipx-lens`, `import clipx`.
"""

__version__ = "0.1.0"
DISTRIBUTION = "clipx-lens"
