"""generative-reality runtime: sources, sinks, pipeline threads, backends and the `genreal` CLI.

Importing this package loads no model, opens no device and does not import torch. The X11
library preload a window needs (realtime/_xlibs.py) happens where a window or a media source
opens, not here.
"""
from genreal_errors import UserError
from realtime.frame import Frame, StereoFrame, Item

__all__ = ["Frame", "StereoFrame", "Item", "UserError"]
__version__ = "0.1.0"
