"""generative-reality runtime: sources, sinks, pipeline threads, backends and the `genreal` CLI.

Importing this package loads no model, opens no device and does not import torch.
"""
from realtime.errors import UserError
from realtime import _xlibs
from realtime.frame import Frame, StereoFrame, Item

__all__ = ["Frame", "StereoFrame", "Item", "UserError"]
__version__ = "0.1.0"

_xlibs.preload()  # before any `import av`, or an OpenCV window would hang (see realtime/_xlibs.py)
